//! The Replicator's and the entity's message APIs, used from inside actors:
//! `call!` and `cast!`, and answers that come back as the caller's own
//! messages so that a slow write never holds its mailbox.

use std::time::Duration;

use ractor::{call, cast, Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_replicated::ddata::{
    DeleteResponse, Key, ReadConsistency, ReplicatorMessage, Tracked, UpdateResponse,
    WriteConsistency, Written,
};
use ractor_replicated::{Error, GCounter, ReplicaId, ReplyTo};
use test_support::{cluster, eventually, test_core_config};
use tokio::sync::mpsc;

const BOUND: Duration = Duration::from_secs(10);

fn increment(counter: &mut Tracked<'_, GCounter>, me: &ReplicaId) {
    counter.apply(counter.increment(me, 1))
}

/// An application actor that writes through the Replicator without waiting.
struct Writer;

enum WriterMessage {
    /// Write `key` at `level`; the answer comes back as `Answered`.
    Write(Key<GCounter>, WriteConsistency, &'static str),
    /// Read `key` locally with `call!` and answer.
    ReadLocal(Key<GCounter>, RpcReplyPort<Option<u128>>),
    /// The answer to a write, tagged with what the write was for.
    Answered(&'static str, UpdateResponse<GCounter>),
    /// An answer that came through `From`, untagged.
    Deleted(DeleteResponse<GCounter>),
    /// Delete `key` with the answer coming back through `From`.
    Delete(Key<GCounter>),
}

impl ractor::Message for WriterMessage {}

impl From<DeleteResponse<GCounter>> for WriterMessage {
    fn from(response: DeleteResponse<GCounter>) -> Self {
        Self::Deleted(response)
    }
}

/// What the writer saw, in the order it saw it.
#[derive(Debug)]
enum Seen {
    Written(&'static str, ractor_replicated::Result<Written>),
    Deleted(ractor_replicated::Result<Written>),
}

struct WriterState {
    replicator: ActorRef<ReplicatorMessage>,
    seen: mpsc::UnboundedSender<Seen>,
}

impl Actor for Writer {
    type Msg = WriterMessage;
    type State = WriterState;
    type Arguments = WriterState;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: WriterState,
    ) -> Result<WriterState, ActorProcessingErr> {
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut WriterState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            WriterMessage::Write(key, level, tag) => {
                let reply = ReplyTo::actor_with(myself, move |response| {
                    WriterMessage::Answered(tag, response)
                });
                cast!(
                    state.replicator,
                    ReplicatorMessage::update(&key, level, increment, reply)
                )?;
            }
            WriterMessage::ReadLocal(key, reply) => {
                let response = call!(
                    state.replicator,
                    ReplicatorMessage::get,
                    &key,
                    ReadConsistency::Local
                )?;
                let value = response.result?.value.map(|counter| counter.value());
                let _ = reply.send(value);
            }
            WriterMessage::Answered(tag, response) => {
                let _ = state.seen.send(Seen::Written(tag, response.result));
            }
            WriterMessage::Delete(key) => {
                cast!(
                    state.replicator,
                    ReplicatorMessage::delete(&key, WriteConsistency::Local, myself)
                )?;
            }
            WriterMessage::Deleted(response) => {
                let _ = state.seen.send(Seen::Deleted(response.result));
            }
        }
        Ok(())
    }
}

async fn writer(
    replicator: ActorRef<ReplicatorMessage>,
) -> (ActorRef<WriterMessage>, mpsc::UnboundedReceiver<Seen>) {
    let (seen, receiver) = mpsc::unbounded_channel();
    let (actor, _) = Actor::spawn(None, Writer, WriterState { replicator, seen })
        .await
        .expect("the writer starts");
    (actor, receiver)
}

async fn next(seen: &mut mpsc::UnboundedReceiver<Seen>) -> Seen {
    tokio::time::timeout(BOUND, seen.recv())
        .await
        .expect("the writer saw an answer in time")
        .expect("the writer runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_actor_goes_on_while_its_majority_write_waits_and_hears_the_outcome_later() {
    let nodes = cluster("pending", 3, test_core_config()).await;
    // Alone of three, node 0 cannot reach a majority: its write waits for
    // the whole timeout.
    nodes[1].shut_down().await;
    nodes[2].shut_down().await;
    eventually("the stopped nodes are seen gone", BOUND, || async {
        nodes[0]
            .dd
            .reachable_peers()
            .await
            .is_ok_and(|p| p.is_empty())
    })
    .await;
    let (writer, mut seen) = writer(nodes[0].dd.actor()).await;
    let key: Key<GCounter> = Key::new("pending");
    let majority = WriteConsistency::majority(Duration::from_secs(3));
    cast!(
        writer,
        WriterMessage::Write(key.clone(), majority, "majority")
    )
    .unwrap();

    // The writer's mailbox is free: it reads (with `call!` inside its own
    // handler) and writes locally while the majority write waits.
    let value = call!(writer, WriterMessage::ReadLocal, key.clone()).unwrap();
    assert_eq!(value, Some(1), "the waiting write stands locally");
    cast!(
        writer,
        WriterMessage::Write(key.clone(), WriteConsistency::Local, "local")
    )
    .unwrap();
    match next(&mut seen).await {
        Seen::Written("local", Ok(written)) => {
            assert_eq!(written.acknowledged_by, [nodes[0].name.clone()]);
        }
        other => panic!("the local write is answered first, not {other:?}"),
    }
    match next(&mut seen).await {
        Seen::Written(
            "majority",
            Err(Error::Timeout {
                reached: 1,
                required: 2,
                ..
            }),
        ) => {}
        other => panic!("the majority write times out, not {other:?}"),
    }
    let value = call!(writer, WriterMessage::ReadLocal, key.clone()).unwrap();
    assert_eq!(value, Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_say_which_nodes_acknowledged_and_work_with_call_and_from() {
    let nodes = cluster("answers", 3, test_core_config()).await;
    let replicator = nodes[0].dd.actor();
    let key: Key<GCounter> = Key::new("acknowledged");
    let all = WriteConsistency::All {
        timeout: Duration::from_secs(5),
    };
    let response = call!(replicator, ReplicatorMessage::update, &key, all, increment).unwrap();
    assert_eq!(response.key, key);
    let mut acknowledged = response.result.unwrap().acknowledged_by;
    assert_eq!(acknowledged[0], nodes[0].name, "this node first");
    acknowledged.sort();
    let mut names: Vec<String> = nodes.iter().map(|node| node.name.clone()).collect();
    names.sort();
    assert_eq!(acknowledged, names);

    let read = call!(
        nodes[1].dd.actor(),
        ReplicatorMessage::get,
        &key,
        ReadConsistency::All {
            timeout: Duration::from_secs(5)
        }
    )
    .unwrap()
    .result
    .unwrap();
    assert_eq!(read.value.map(|counter| counter.value()), Some(1));
    assert_eq!(read.answered_by.len(), 3);
    assert_eq!(read.answered_by[0], nodes[1].name, "the reading node first");

    let keys = call!(replicator, ReplicatorMessage::GetKeys).unwrap();
    assert_eq!(keys, ["acknowledged"]);
    let stats = call!(replicator, ReplicatorMessage::Stats).unwrap();
    assert_eq!(stats.keys, 1);

    // A delete answered through `From<DeleteResponse<_>>`.
    let (writer, mut seen) = writer(replicator.clone()).await;
    cast!(writer, WriterMessage::Delete(key.clone())).unwrap();
    match next(&mut seen).await {
        Seen::Deleted(Ok(written)) => assert_eq!(written.acknowledged_by, [nodes[0].name.clone()]),
        other => panic!("the delete is answered, not {other:?}"),
    }
    let gone = call!(
        replicator,
        ReplicatorMessage::get,
        &key,
        ReadConsistency::Local
    )
    .unwrap();
    assert!(matches!(gone.result, Err(Error::Deleted { .. })));
}
