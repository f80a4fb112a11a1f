//! `berth_server::run` with a listener and a shutdown future handed in, as an embedder or a
//! test would: it serves on the listener it is given and returns once the future completes.

use std::time::Duration;

use berth_server::{Config, Listeners};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

#[tokio::test]
async fn serves_the_listener_it_is_given_until_the_shutdown_future_completes() {
    let apps = std::env::temp_dir().join(format!("berth-run-test-{}", std::process::id()));
    std::fs::create_dir_all(&apps).expect("create an empty apps directory");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("bound address");
    // The config's own address is never bound: run serves the listener it is handed.
    let config = Config::new(&apps, "127.0.0.1:1".parse().expect("address"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let listeners = Listeners {
        http: listener,
        admin: None,
    };
    let server = tokio::spawn(berth_server::run(listeners, config, async {
        let _ = stopped.await;
    }));

    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(b"GET /nowhere HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .await
        .expect("send");
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut answer))
        .await
        .expect("answered in time")
        .expect("read");
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    assert!(answer.contains("no app is mounted at /nowhere"), "{answer}");

    stop.send(()).expect("the server is still running");
    let served = tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("run returns once the shutdown future completes")
        .expect("no panic");
    assert!(served.is_ok(), "{served:?}");
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "the listener is closed after run returns"
    );
    let _ = std::fs::remove_dir_all(&apps);
}
