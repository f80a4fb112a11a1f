//! An app with lifecycle hooks: `init` reads the `greeting` setting from `berth.toml`
//! (`[apps.greeter.settings]`, default `Hello`), the handler answers `{greeting}, {name}!`, and
//! `shutdown` logs when this version is retired.
//!
//! Run with: `make run` then `curl localhost:8080/greeter?name=Ada`.

use std::sync::OnceLock;

use berth_app::{AppConfig, Host, Request, Response};

/// Set once by `init`. Each loaded version of the app has its own copy of this static.
static GREETING: OnceLock<String> = OnceLock::new();

const DEFAULT_GREETING: &str = "Hello";

async fn init(config: AppConfig, host: Host) {
    let greeting = GREETING.get_or_init(|| config.get_or("greeting", DEFAULT_GREETING).to_owned());
    berth_app::info!(host, "greeter ready with greeting {greeting:?}");
}

async fn app(req: Request, _host: Host) -> Response {
    let greeting = GREETING.get().map_or(DEFAULT_GREETING, String::as_str);
    greet(greeting, &req)
}

fn greet(greeting: &str, req: &Request) -> Response {
    let name = req.query_param("name").unwrap_or_else(|| "world".into());
    Response::text(format!("{greeting}, {name}!\n"))
}

async fn shutdown(host: Host) {
    berth_app::info!(host, "greeter shutting down");
}

berth_app::export_app!(
    name = "greeter",
    handler = app,
    init = init,
    shutdown = shutdown,
);

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use berth_app::testing::{MockHost, block_on};
    use berth_app::{AppConfig, Level, Method, Request};

    fn body(response: berth_app::Response) -> String {
        block_on(response.into_body().text()).expect("body")
    }

    #[test]
    fn greets_the_named_person_or_the_world() {
        let named = Request::builder(Method::GET, "/?name=Ada")
            .build()
            .expect("valid request");
        assert_eq!(body(super::greet("Hello", &named)), "Hello, Ada!\n");
        let anonymous = Request::builder(Method::GET, "/")
            .build()
            .expect("valid request");
        assert_eq!(body(super::greet("Hello", &anonymous)), "Hello, world!\n");
    }

    /// The only test that touches the `GREETING` static (tests share it).
    #[test]
    fn init_reads_the_greeting_and_the_hooks_log() {
        let mock = Arc::new(MockHost::new());
        let config = AppConfig::new([("greeting".to_owned(), "Ahoy".to_owned())].into());
        block_on(super::init(config, mock.host()));
        let response = mock.call_shared(
            super::app,
            Request::builder(Method::GET, "/?name=Ada")
                .build()
                .expect("valid request"),
        );
        assert_eq!(body(response), "Ahoy, Ada!\n");
        block_on(super::shutdown(mock.host()));
        assert_eq!(
            mock.logs(),
            [
                (
                    Level::Info,
                    "greeter ready with greeting \"Ahoy\"".to_owned()
                ),
                (Level::Info, "greeter shutting down".to_owned()),
            ]
        );
    }
}
