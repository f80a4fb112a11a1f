//! A JSON API on PostgreSQL: the talk's "async WSGI app with a database", with the real
//! `tokio-postgres` on host sockets, behind the SDK's pool.
//!
//! | route | answer |
//! | --- | --- |
//! | `POST /todo/items` `{"title": str}` | `201` `{"id", "title", "done": false}` |
//! | `GET /todo/items` | `200` every item, in id order |
//! | `GET /todo/items/{id}` | `200` the item, or `404` |
//! | `PATCH /todo/items/{id}` `{"done": bool}` and/or `{"title": str}` | `200` the item |
//! | `DELETE /todo/items/{id}` | `204` |
//!
//! Settings (`[apps.todo.settings]`): `database_url` (required), `pool_size` (default 8),
//! `pool_wait` (seconds to wait for a free connection, default 2). The allowlist must grant the
//! database, e.g. `allowed_outbound_hosts = ["postgres://127.0.0.1:5432"]`. `init` creates the
//! table when it is missing; an unreachable database keeps the app from being mounted.
//!
//! When the database is down or the pool stays exhausted, requests get `503` with the reason.

use std::time::Duration;

use berth_app::postgres::{Pool, PoolBuilder, PoolError, tokio_postgres};
use berth_app::{AppConfig, Host, Method, Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

/// The table, created by `init` when it is missing.
const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS todo_items (
    id BIGSERIAL PRIMARY KEY,
    title TEXT NOT NULL,
    done BOOLEAN NOT NULL DEFAULT false
)";

/// Builds the pool from the settings and makes sure the table exists.
async fn init(config: AppConfig, host: Host) -> Result<Pool, String> {
    let url = config
        .get("database_url")
        .ok_or("the setting database_url is missing: add it under [apps.todo.settings]")?;
    let size = setting(&config, "pool_size", 8)?;
    let wait = setting(&config, "pool_wait", 2)?;
    let pool = PoolBuilder::new(url)
        .max_size(usize::try_from(size).map_err(|_| "pool_size is too large")?)
        .wait_timeout(Duration::from_secs(wait))
        .build(&host)
        .map_err(|err| format!("database_url: {err}"))?;
    let client = pool.get(&host).await.map_err(|err| err.to_string())?;
    client
        .batch_execute(SCHEMA)
        .await
        .map_err(|err| format!("creating the table: {err}"))?;
    drop(client);
    Ok(pool)
}

/// A numeric setting, or `default` when it is absent.
fn setting(config: &AppConfig, key: &str, default: u64) -> Result<u64, String> {
    config.get(key).map_or(Ok(default), |text| {
        text.parse()
            .map_err(|_| format!("the setting {key} must be a whole number, not {text:?}"))
    })
}

/// Routes a request.
async fn app(mut req: Request, host: Host) -> Response {
    let Some(pool) = host.state::<Pool>() else {
        return failure(StatusCode::INTERNAL_SERVER_ERROR, "the pool is missing");
    };
    let path = req.path().trim_end_matches('/').to_owned();
    let Some(rest) = path.strip_prefix("/items") else {
        return failure(StatusCode::NOT_FOUND, "no such route: try /todo/items");
    };
    let id = match rest.strip_prefix('/') {
        None if rest.is_empty() => None,
        Some(id) => match id.parse::<i64>() {
            Ok(id) => Some(id),
            Err(_) => return failure(StatusCode::NOT_FOUND, "an item's id is an integer"),
        },
        None => return failure(StatusCode::NOT_FOUND, "no such route: try /todo/items"),
    };
    let method = req.method().clone();
    let result = match (method, id) {
        (Method::GET, None) => list(pool, &host).await,
        (Method::POST, None) => match read::<NewItem>(&mut req).await {
            Ok(item) => create(pool, &host, item).await,
            Err(response) => return response,
        },
        (Method::GET, Some(id)) => show(pool, &host, id).await,
        (Method::PATCH, Some(id)) => match read::<Changes>(&mut req).await {
            Ok(changes) => update(pool, &host, id, changes).await,
            Err(response) => return response,
        },
        (Method::DELETE, Some(id)) => delete(pool, &host, id).await,
        _ => return failure(StatusCode::METHOD_NOT_ALLOWED, "method not allowed here"),
    };
    result.unwrap_or_else(Failure::into_response)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewItem {
    title: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Changes {
    title: Option<String>,
    done: Option<bool>,
}

/// The request's JSON body, or the `400` that says why it is not usable.
async fn read<T: serde::de::DeserializeOwned>(req: &mut Request) -> Result<T, Response> {
    req.take_body()
        .json::<T>()
        .await
        .map_err(|err| failure(StatusCode::BAD_REQUEST, &format!("invalid JSON: {err}")))
}

async fn list(pool: &Pool, host: &Host) -> Result<Response, Failure> {
    let client = pool.get(host).await?;
    let rows = client
        .query("SELECT id, title, done FROM todo_items ORDER BY id", &[])
        .await?;
    let items: Vec<Value> = rows.iter().map(item).collect();
    Ok(Response::json(&items))
}

async fn create(pool: &Pool, host: &Host, new: NewItem) -> Result<Response, Failure> {
    let client = pool.get(host).await?;
    let row = client
        .query_one(
            "INSERT INTO todo_items (title) VALUES ($1) RETURNING id, title, done",
            &[&new.title],
        )
        .await?;
    Ok(Response::json(&item(&row)).with_status(StatusCode::CREATED))
}

async fn show(pool: &Pool, host: &Host, id: i64) -> Result<Response, Failure> {
    let client = pool.get(host).await?;
    let statement = client
        .prepare_cached("SELECT id, title, done FROM todo_items WHERE id = $1")
        .await?;
    match client.query_opt(&statement, &[&id]).await? {
        Some(row) => Ok(Response::json(&item(&row))),
        None => Err(Failure::NotFound(id)),
    }
}

/// Each change is its own statement, and all of them one transaction: a `PATCH` that sets
/// both fields changes both or neither.
async fn update(pool: &Pool, host: &Host, id: i64, changes: Changes) -> Result<Response, Failure> {
    let mut client = pool.get(host).await?;
    let transaction = client.transaction().await?;
    if let Some(title) = &changes.title {
        transaction
            .execute(
                "UPDATE todo_items SET title = $2 WHERE id = $1",
                &[&id, title],
            )
            .await?;
    }
    if let Some(done) = changes.done {
        transaction
            .execute(
                "UPDATE todo_items SET done = $2 WHERE id = $1",
                &[&id, &done],
            )
            .await?;
    }
    let row = transaction
        .query_opt(
            "SELECT id, title, done FROM todo_items WHERE id = $1",
            &[&id],
        )
        .await?;
    let row = row.ok_or(Failure::NotFound(id))?;
    transaction.commit().await?;
    Ok(Response::json(&item(&row)))
}

async fn delete(pool: &Pool, host: &Host, id: i64) -> Result<Response, Failure> {
    let client = pool.get(host).await?;
    match client
        .execute("DELETE FROM todo_items WHERE id = $1", &[&id])
        .await?
    {
        0 => Err(Failure::NotFound(id)),
        _ => Ok(Response::new(StatusCode::NO_CONTENT)),
    }
}

fn item(row: &tokio_postgres::Row) -> Value {
    json!({
        "id": row.get::<_, i64>(0),
        "title": row.get::<_, String>(1),
        "done": row.get::<_, bool>(2),
    })
}

/// Why a request could not be answered with an item.
enum Failure {
    NotFound(i64),
    Pool(PoolError),
    Database(tokio_postgres::Error),
}

impl From<PoolError> for Failure {
    fn from(err: PoolError) -> Self {
        Failure::Pool(err)
    }
}

impl From<tokio_postgres::Error> for Failure {
    fn from(err: tokio_postgres::Error) -> Self {
        Failure::Database(err)
    }
}

impl Failure {
    fn into_response(self) -> Response {
        match self {
            Failure::NotFound(id) => failure(StatusCode::NOT_FOUND, &format!("no item {id}")),
            // No connection to be had: the database is down, or every connection is busy.
            Failure::Pool(err) => failure(StatusCode::SERVICE_UNAVAILABLE, &err.to_string()),
            // The connection broke under the query (the database restarted): try again soon.
            Failure::Database(err) if err.is_closed() => failure(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("database connection lost: {err}"),
            ),
            Failure::Database(err) => failure(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("database error: {}", berth_app::error_chain(&err)),
            ),
        }
    }
}

fn failure(status: StatusCode, reason: &str) -> Response {
    Response::json(&json!({ "error": reason })).with_status(status)
}

berth_app::export_app!(name = "todo", handler = app, init = init);

#[cfg(test)]
mod tests {
    use berth_app::testing::{MockHost, block_on};
    use berth_app::{Method, Request, StatusCode};

    fn call(method: Method, path: &str, body: &str) -> (StatusCode, String) {
        let mock = MockHost::new();
        let req = Request::builder(method, path)
            .body(body.to_owned())
            .build()
            .expect("valid request");
        let response = mock.call(super::app, req);
        let status = response.status();
        (status, block_on(response.into_body().text()).expect("body"))
    }

    #[test]
    fn without_its_pool_the_app_says_so() {
        let (status, body) = call(Method::GET, "/items", "");
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(body.contains("pool is missing"), "{body}");
    }
}
