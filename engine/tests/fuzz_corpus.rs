//! Replays the committed fuzz corpora on stable, so inputs that once crashed
//! a target stay fixed.

// Helpers outside #[test] functions unwrap too: a failure there is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

#[test]
fn scene_json_corpus_replays_without_panics() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/scene_json");
    let mut files = 0;
    let mut accepted = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            files += 1;
            accepted += usize::from(engine::fuzzing::scene_json(&std::fs::read(&path).unwrap()));
        }
    }
    assert!(
        files >= 5,
        "the seed corpus is missing from {}",
        dir.display()
    );
    assert!(accepted >= 3, "the valid seeds still load");
}
