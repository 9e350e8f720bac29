flatmachine_runtime::flatmachine!("ui/machines/with_backends.yml");

fn main() {
    let b = with_backends::SPEC.backends.expect("settings.backends compiled");
    assert_eq!(b.work, Some("sqlite"));
    assert_eq!(b.registration, Some("sqlite"));
    assert_eq!(b.sqlite_path, Some("./data/workers.sqlite"));
    assert_eq!(b.locking, Some("none"));
}
