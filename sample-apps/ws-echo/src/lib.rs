//! A WebSocket echo, the one the Autobahn test suite runs against: at `/ws-echo` (or
//! `/ws-echo/`) it sends every text and binary message back unchanged, and answers the
//! client's close with a close of the same code. Any other request to the root gets a `426`
//! that says how to connect; other paths a `404`.
//!
//! The host runs the protocol (fragmentation, UTF-8 checks, ping and pong, limits), so the
//! echo is the whole app. It logs nothing per message: it is also the echo benchmark.
//!
//! Run with: `make run`, then `python3 -m websockets ws://localhost:8080/ws-echo`.

use berth_app::header::UPGRADE;
use berth_app::{Host, Request, Response, StatusCode, WebSocket};

async fn app(req: Request, host: Host) -> Response {
    if !matches!(req.path(), "/" | "") {
        return Response::text("no such route: the echo is at the mount root\n")
            .with_status(StatusCode::NOT_FOUND);
    }
    match req.websocket() {
        Some(upgrade) => upgrade.accept(&host, |socket, _host| echo(socket)),
        None => Response::text(
            "426 Upgrade Required: this is a WebSocket echo; connect with a WebSocket client, \
             e.g. `python3 -m websockets ws://HOST/ws-echo`\n",
        )
        .with_status(StatusCode::UPGRADE_REQUIRED)
        .with_header(UPGRADE, "websocket"),
    }
}

/// Sends every message back as it came, until the client closes (answered with its own
/// code) or goes away.
async fn echo(mut socket: WebSocket) {
    while let Some(message) = socket.recv().await {
        let close = message.is_close();
        // A failed send means the socket is closing already: nothing more to echo.
        if socket.send(message).await.is_err() || close {
            break;
        }
    }
}

berth_app::export_app!(name = "ws-echo", handler = app);

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use berth_app::testing::{MockHost, MockWebSocket, block_on, websocket_request};
    use berth_app::{Bytes, Message, Method, Request, StatusCode, header};

    /// Connects to the echo at `path` (below its mount, `/ws-echo`) through a mock host.
    fn connect(path: &str) -> MockWebSocket {
        let mock = Arc::new(MockHost::new());
        let request = websocket_request(path).mount_prefix("/ws-echo");
        let request = request.build().expect("valid request");
        let response = mock.call_shared(super::app, request);
        assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS, "{path}");
        mock.websocket().expect("accepted")
    }

    #[test]
    fn echoes_text_and_binary_unchanged_at_the_root() {
        // The host gives `/ws-echo` and `/ws-echo/` both as the path `/`.
        for path in ["/", "/?any=query"] {
            let client = connect(path);
            let messages = [
                Message::text("héllo"),
                Message::text(""),
                Message::binary(Bytes::from_static(&[0, 159, 146, 150, 255])),
                Message::binary(vec![7; 65_536]),
            ];
            for message in messages {
                client.send(message.clone());
                assert_eq!(client.recv(), Some(message));
            }
            client.close(1000, "done");
            assert_eq!(client.recv(), Some(Message::close(1000, "done")));
            assert_eq!(client.recv(), None);
            assert_eq!(client.join(), Ok(()));
        }
    }

    #[test]
    fn answers_a_close_with_the_same_code() {
        let client = connect("/");
        client.send(Message::text("last"));
        client.close(4321, "");
        assert_eq!(client.recv(), Some(Message::text("last")));
        assert_eq!(client.recv(), Some(Message::close(4321, "")));
        assert_eq!(client.join(), Ok(()));
        // A close without a code is answered with one without a code.
        let client = connect("/");
        client.send(Message::Close(None));
        assert_eq!(client.recv(), Some(Message::Close(None)));
        assert_eq!(client.join(), Ok(()));
    }

    #[test]
    fn keeps_order_under_backpressure_and_ends_when_the_client_goes() {
        let client = connect("/");
        // More than the mock's send queue holds: the echo waits for the client to read.
        for n in 0..200 {
            client.send(Message::text(n.to_string()));
        }
        for n in 0..200 {
            assert_eq!(client.recv(), Some(Message::text(n.to_string())));
        }
        client.end();
        assert_eq!(client.join(), Ok(()));
        assert_eq!(client.recv(), None, "no close for a client that is gone");
    }

    #[test]
    fn a_plain_request_gets_426_and_another_path_404() {
        let mock = MockHost::new();
        let request = Request::builder(Method::GET, "/").build().expect("valid");
        let response = mock.call(super::app, request);
        assert_eq!(response.status(), StatusCode::UPGRADE_REQUIRED);
        assert_eq!(response.headers()[header::UPGRADE], "websocket");
        let text = block_on(response.into_body().text()).expect("body");
        assert!(text.contains("WebSocket client"), "{text}");

        let request = websocket_request("/other").build().expect("valid");
        let response = MockHost::new().call(super::app, request);
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
    }
}
