//! `inspect` and `convert` on files that are not ours (issue 17, item 8): a SQLite source is
//! opened read-only and refused without the checkpoint table, leaving the file byte for byte
//! as it was.

use std::path::Path;
use std::process::Command;

fn flatmachine(args: &[&str], dir: &Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_flatmachine"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run flatmachine");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Another application's database, in the default rollback-journal mode.
fn unrelated_database(path: &Path) {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute_batch(
        "CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT);
         INSERT INTO notes (text) VALUES ('keep me');",
    )
    .unwrap();
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn inspect_and_convert_leave_an_unrelated_sqlite_file_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("other.sqlite");
    unrelated_database(&db);
    let before = std::fs::read(&db).unwrap();
    let listing = files_in(tmp.path());

    let (code, stderr) = flatmachine(&["inspect", "--dir", "sqlite:other.sqlite"], tmp.path());
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("not a flatmachine database"), "{stderr}");
    let (code, stderr) = flatmachine(
        &["inspect", "some-id", "--dir", "sqlite:other.sqlite"],
        tmp.path(),
    );
    assert_eq!(code, 1, "{stderr}");
    let (code, stderr) = flatmachine(
        &["convert", "--from", "sqlite:other.sqlite", "--to", "out"],
        tmp.path(),
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("not a flatmachine database"), "{stderr}");

    assert_eq!(std::fs::read(&db).unwrap(), before, "the file changed");
    assert_eq!(files_in(tmp.path()), listing, "files were created");
    let conn = rusqlite::Connection::open(&db).unwrap();
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "delete");
}

#[test]
fn inspect_refuses_a_file_that_is_not_sqlite_without_changing_it() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("notes.txt");
    std::fs::write(&path, "just some text, not a database\n").unwrap();
    let (code, stderr) = flatmachine(&["inspect", "--dir", "sqlite:notes.txt"], tmp.path());
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "just some text, not a database\n"
    );
    assert_eq!(files_in(tmp.path()), vec!["notes.txt".to_string()]);
}
