//! The README's map of the crate names every module file and folder of
//! `src/`, so that it cannot fall behind the tree.

use std::path::Path;

#[test]
fn the_readme_map_names_every_module_of_the_tree() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let map = readme
        .split("## Map of the crate")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("README has a '## Map of the crate' section");
    let mut missing = Vec::new();
    for dir in ["src", "src/ddata", "src/persistence", "src/cluster"] {
        for entry in std::fs::read_dir(root.join(dir)).expect("a source folder") {
            let name = entry.expect("an entry").file_name();
            let name = name.to_string_lossy();
            if name == "lib.rs" {
                continue;
            }
            let named = if name.ends_with(".rs") {
                map.contains(&format!("`{name}`")) || map.contains(&format!("{dir}/{name}`"))
            } else {
                map.contains(&format!("`{name}/`")) || map.contains(&format!("{dir}/{name}/`"))
            };
            if !named {
                missing.push(format!("{dir}/{name}"));
            }
        }
    }
    assert!(missing.is_empty(), "not in the README's map: {missing:?}");
}
