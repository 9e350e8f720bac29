//! Result backends through the public API.

use std::sync::Arc;
use std::time::Duration;

use flatmachine_runtime::StateError;
use flatmachine_runtime::results::{
    InMemoryResultBackend, ResultBackend, ResultError, make_uri, parse_uri,
};
use serde_json::json;

#[test]
fn uris_are_made_and_parsed() {
    assert_eq!(make_uri("abc", "result"), "flatagents://abc/result");
    assert_eq!(make_uri("abc", "checkpoint"), "flatagents://abc/checkpoint");
    assert_eq!(
        parse_uri("flatagents://abc/result").unwrap(),
        ("abc", "result")
    );
    assert_eq!(parse_uri("flatagents://abc/a/b").unwrap(), ("abc", "a/b"));
    // No path means `result` (reference behaviour).
    assert_eq!(parse_uri("flatagents://abc").unwrap(), ("abc", "result"));

    for bad in [
        "",
        "abc/result",
        "http://abc/result",
        "flatagents:/abc/result",
        "FLATAGENTS://abc/result",
        "flatagents://",
        "flatagents:///result",
        "flatagents://abc/",
    ] {
        let err = parse_uri(bad).unwrap_err();
        assert!(
            matches!(err, ResultError::InvalidUri { ref uri, .. } if uri == bad),
            "{bad:?}"
        );
        assert!(
            err.to_string()
                .contains("flatagents://<execution_id>/<path>"),
            "{err}"
        );
    }
}

#[tokio::test]
async fn write_then_read_exists_delete() {
    let backend = InMemoryResultBackend::new();
    let uri = make_uri("child-1", "result");
    assert!(!backend.exists(&uri).await.unwrap());
    assert_eq!(backend.read(&uri, false, None).await.unwrap(), None);

    backend.write(&uri, json!({"y": 2})).await.unwrap();
    assert!(backend.exists(&uri).await.unwrap());
    assert_eq!(
        backend.read(&uri, false, None).await.unwrap(),
        Some(json!({"y": 2}))
    );
    assert_eq!(
        backend.read(&uri, true, None).await.unwrap(),
        Some(json!({"y": 2}))
    );
    // `flatagents://id` and `flatagents://id/result` are the same place.
    assert_eq!(
        backend
            .read("flatagents://child-1", false, None)
            .await
            .unwrap(),
        Some(json!({"y": 2}))
    );
    // Other paths of the same execution are separate.
    assert!(
        !backend
            .exists(&make_uri("child-1", "checkpoint"))
            .await
            .unwrap()
    );

    backend.write(&uri, json!(null)).await.unwrap();
    assert_eq!(
        backend.read(&uri, false, None).await.unwrap(),
        Some(json!(null))
    );
    assert!(
        backend.exists(&uri).await.unwrap(),
        "a stored null still exists"
    );

    backend.delete(&uri).await.unwrap();
    backend.delete(&uri).await.unwrap(); // absent: fine
    assert!(!backend.exists(&uri).await.unwrap());
    assert_eq!(backend.read(&uri, false, None).await.unwrap(), None);
}

#[tokio::test]
async fn blocking_readers_are_woken_by_a_concurrent_write() {
    let backend = Arc::new(InMemoryResultBackend::new());
    let uri = make_uri("child-2", "result");
    let mut readers = Vec::new();
    for _ in 0..4 {
        let backend = Arc::clone(&backend);
        let uri = uri.clone();
        readers.push(tokio::spawn(
            async move { backend.read(&uri, true, None).await },
        ));
    }
    // Let the readers block.
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(readers.iter().all(|r| !r.is_finished()));
    // A write elsewhere does not wake them with a wrong value.
    backend
        .write(&make_uri("other", "result"), json!(0))
        .await
        .unwrap();

    backend.write(&uri, json!({"done": true})).await.unwrap();
    for reader in readers {
        let value = tokio::time::timeout(Duration::from_secs(5), reader)
            .await
            .expect("reader woken")
            .unwrap()
            .unwrap();
        assert_eq!(value, Some(json!({"done": true})));
    }
}

#[tokio::test]
async fn blocking_read_with_timeout_gets_a_write_in_time() {
    let backend = Arc::new(InMemoryResultBackend::new());
    let uri = make_uri("child-3", "result");
    let writer = {
        let backend = Arc::clone(&backend);
        let uri = uri.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            backend.write(&uri, json!([1, 2, 3])).await.unwrap();
        })
    };
    let value = backend
        .read(&uri, true, Some(Duration::from_secs(10)))
        .await
        .unwrap();
    assert_eq!(value, Some(json!([1, 2, 3])));
    writer.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn blocking_read_times_out() {
    let backend = InMemoryResultBackend::new();
    let uri = make_uri("never", "result");
    let err = backend
        .read(&uri, true, Some(Duration::from_secs(30)))
        .await
        .unwrap_err();
    match &err {
        ResultError::Timeout { uri: u, timeout } => {
            assert_eq!(u, &uri);
            assert_eq!(*timeout, Duration::from_secs(30));
        }
        other => panic!("{other}"),
    }
    assert!(
        err.to_string().contains("flatagents://never/result"),
        "{err}"
    );
    let state: StateError = err.into();
    assert_eq!(state.error_type, "TimeoutError");

    // After a timeout, a later write and read still work.
    backend.write(&uri, json!(1)).await.unwrap();
    assert_eq!(
        backend
            .read(&uri, true, Some(Duration::from_secs(1)))
            .await
            .unwrap(),
        Some(json!(1))
    );
}

#[tokio::test]
async fn invalid_uris_are_errors_for_every_operation() {
    let backend = InMemoryResultBackend::new();
    let bad = "result://x";
    assert!(matches!(
        backend.write(bad, json!(1)).await,
        Err(ResultError::InvalidUri { .. })
    ));
    assert!(matches!(
        backend.read(bad, true, None).await,
        Err(ResultError::InvalidUri { .. })
    ));
    assert!(matches!(
        backend.exists(bad).await,
        Err(ResultError::InvalidUri { .. })
    ));
    assert!(matches!(
        backend.delete(bad).await,
        Err(ResultError::InvalidUri { .. })
    ));
    let state: StateError = backend.exists(bad).await.unwrap_err().into();
    assert_eq!(state.error_type, "ResultError");
}

#[tokio::test]
async fn usable_as_a_shared_trait_object() {
    let backend: Arc<dyn ResultBackend> = Arc::new(InMemoryResultBackend::new());
    let reader = {
        let backend = Arc::clone(&backend);
        tokio::spawn(async move { backend.read("flatagents://p/result", true, None).await })
    };
    tokio::task::yield_now().await;
    backend
        .write("flatagents://p/result", json!("hi"))
        .await
        .unwrap();
    assert_eq!(reader.await.unwrap().unwrap(), Some(json!("hi")));
}
