//! Regenerates the scenes shipped in `engine/scenes/`:
//! `cargo run -p engine --example generate_scenes`.
//!
//! The output is deterministic; a test in `tests/scenes.rs` checks that the
//! committed files still match it.

#[path = "../tests/support/scenegen.rs"]
mod scenegen;

fn main() -> std::io::Result<()> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scenes");
    std::fs::write(dir.join("demo.json"), scenegen::demo())?;
    std::fs::write(dir.join("stress.json"), scenegen::stress())?;
    std::fs::write(dir.join("social.json"), scenegen::social())?;
    Ok(())
}
