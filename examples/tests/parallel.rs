//! The `parallel` example runs offline and shows each composition feature.

#[test]
fn the_parallel_example_reviews_summarizes_and_reads_back_the_launch() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_parallel"))
        .output()
        .expect("run parallel");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(r#""style_review":{"aspect":"style""#),
        "{stdout}"
    );
    assert!(
        stdout.contains(r#""fact_review":{"aspect":"facts""#),
        "{stdout}"
    );
    assert!(
        stdout.contains(r#""doc-12":{"summary":"document number 12...""#),
        "{stdout}"
    );
    let peak: usize = stdout
        .lines()
        .find_map(|l| l.strip_prefix("at most "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("the peak line");
    assert!((1..=4).contains(&peak), "{stdout}");
    assert!(
        stdout.contains(r#"{"archived":"Quarterly report","documents":12}"#),
        "{stdout}"
    );
}
