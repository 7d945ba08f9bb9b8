//! The README's Rust snippets compile and do what the README says: each one is quoted from
//! an example file that CI builds, and the handler example runs here.

#[allow(dead_code, unreachable_pub)]
#[path = "../../examples/readme.rs"]
mod readme;

use std::path::Path;
use std::sync::Arc;

/// The ```rust blocks of a Markdown file.
fn rust_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<Vec<&str>> = None;
    for line in markdown.lines() {
        match (&mut current, line.trim_start()) {
            (None, "```rust") => current = Some(Vec::new()),
            (Some(lines), "```") => {
                blocks.push(lines.join("\n"));
                current = None;
            }
            (Some(lines), _) => lines.push(line),
            (None, _) => {}
        }
    }
    blocks
}

/// `block`'s lines appear, in order and contiguous, in `source` (indentation aside).
fn quotes(source: &str, block: &str) -> bool {
    let wanted: Vec<&str> = block.lines().map(str::trim).collect();
    let lines: Vec<&str> = source.lines().map(str::trim).collect();
    lines
        .windows(wanted.len())
        .any(|window| window == wanted.as_slice())
}

#[test]
fn every_rust_snippet_in_the_readme_is_quoted_from_a_compiled_example() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let mut sources = Vec::new();
    for dir in ["examples", "examples/orders/src", "examples/orders/src/bin"] {
        for entry in std::fs::read_dir(root.join(dir)).expect("examples") {
            let path = entry.expect("an entry").path();
            if path.extension().is_some_and(|e| e == "rs") {
                sources.push((path.clone(), std::fs::read_to_string(&path).expect("read")));
            }
        }
    }
    let blocks = rust_blocks(&readme);
    assert!(
        blocks.len() >= 3,
        "the README shows Rust code: {}",
        blocks.len()
    );
    for block in blocks {
        assert!(
            sources.iter().any(|(_, source)| quotes(source, &block)),
            "this README snippet is in no example file, so nothing compiles it:\n{block}"
        );
    }
}

#[tokio::test]
async fn the_handler_example_commits_on_success_and_rolls_back_on_failure() {
    let ledger = readme::run_billing().await.expect("the example runs");
    assert_eq!(
        ledger,
        readme::Ledger {
            committed: vec!["acme: 4200".into(), "flaky-corp: 990".into()],
            rolled_back: 2,
            dead_lettered: 1,
        },
        "the flaky invoice rolled back once and then committed; the overflowing one was \
         rolled back and dead-lettered"
    );
}

#[test]
fn the_handler_example_without_its_pool_fails_at_build_naming_it() {
    let error = readme::billing_worker_without_pool(Arc::new(longshore::MemoryBroker::new()))
        .expect_err("no worker without the pool");
    let text = error.to_string();
    assert!(
        text.contains("the per-job factory of `readme::readme::Transaction` needs a `readme::readme::Pool`, but none is registered"),
        "{text}"
    );
}

#[tokio::test]
async fn the_handler_unit_test_example_passes() {
    readme::handler_unit_test()
        .await
        .expect("the unit test passes");
}
