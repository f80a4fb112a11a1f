//! Unit tests of the ABI conversions, both directions.
//!
//! Each test hands a value over the way one side would, reads it back the way the other side
//! would, and checks that nothing changed and that every release function ran exactly once.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use futures_executor::block_on;
use futures_util::StreamExt as _;
use futures_util::stream;
use http::header::{CONTENT_TYPE, HeaderValue};

use std::ffi::c_void;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::ptr;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};

use super::addr::*;
use super::body::*;
use super::buf::*;
use super::export::*;
use super::future::*;
use super::headers::*;
use super::host_handle::*;
use super::outcome::*;
use crate::abi::*;
use crate::error::BodyError;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Counts how many times something was dropped.
#[derive(Clone, Debug, Default)]
struct Drops(Arc<AtomicUsize>);

impl Drops {
    fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }

    /// `bytes` in a `Bytes` whose owner bumps this counter when it is dropped.
    fn bytes(&self, bytes: &'static [u8]) -> Bytes {
        Bytes::from_owner(Counted {
            bytes,
            drops: self.clone(),
        })
    }
}

struct Counted {
    bytes: &'static [u8],
    drops: Drops,
}

impl AsRef<[u8]> for Counted {
    fn as_ref(&self) -> &[u8] {
        self.bytes
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.drops.0.fetch_add(1, Ordering::SeqCst);
    }
}

fn receive(body: AbiBody) -> ForeignBody {
    // SAFETY: every body in these tests was just made by `AbiBody`'s constructors and is handed
    // over once.
    unsafe { ForeignBody::from_abi(body) }
}

/// Reads a received body to its end: the chunks, then the error that ended it, if any.
fn read_all(body: ForeignBody) -> (Vec<Bytes>, Option<BodyError>) {
    let items: Vec<_> = block_on(body.collect());
    let mut chunks = Vec::new();
    let mut error = None;
    for item in items {
        match item {
            Ok(chunk) => chunks.push(chunk),
            Err(err) => error = Some(err),
        }
    }
    (chunks, error)
}

/// Polls a raw body once, the way the receiving side does.
fn poll_raw(body: &AbiBody) -> AbiChunkPoll {
    let poll = body.poll_chunk.expect("a body with a stream");
    let mut cx = Context::from_waker(Waker::noop());
    // SAFETY: `state` is alive (the body has not been dropped) and `cx` outlives the call.
    cx.with_ffi_context(|fcx| unsafe { poll(body.state, fcx) })
}

fn drop_raw(body: AbiBody) {
    drop(receive(body));
}

/// What an app gets from `Host::fetch` when the host answers with `outcome`.
fn fetch_result(
    outcome: AbiFetchOutcome,
    buffer_limit: Option<u64>,
) -> Result<crate::FetchResponse, crate::FetchError> {
    crate::host::fetch_result(block_on(HostFetch::ready(outcome)), buffer_limit)
}

fn stream_of(chunks: Vec<Result<Bytes, BodyError>>) -> ChunkStream {
    Box::pin(stream::iter(chunks))
}

// ---------------------------------------------------------------------------------------------
// Borrowed bytes and headers
// ---------------------------------------------------------------------------------------------

#[test]
fn abi_str_reads_back_and_null_is_empty() {
    let text = "héllo";
    let abi = AbiStr::new(text.as_bytes());
    // SAFETY: `text` outlives the reads.
    unsafe {
        assert_eq!(abi.as_bytes(), text.as_bytes());
        assert_eq!(abi.to_str("greeting"), Ok(text));
    }
    let null = AbiStr {
        ptr: ptr::null(),
        len: 0,
    };
    // SAFETY: null with length 0 is the ABI's empty string.
    assert_eq!(unsafe { null.as_bytes() }, b"");

    let bad = [0xff_u8, 0xfe];
    // SAFETY: `bad` outlives the read.
    let err = unsafe { AbiStr::new(&bad).to_str("path") };
    assert_eq!(err, Err(BoundaryError("path is not UTF-8".to_owned())));
}

#[test]
fn headers_round_trip_in_order_and_byte_exact() {
    let mut map = HeaderMap::new();
    map.append("x-multi", HeaderValue::from_static("one"));
    map.append("x-multi", HeaderValue::from_static("two"));
    map.append(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    map.append("x-multi", HeaderValue::from_static("three"));
    map.append(
        "x-binary",
        HeaderValue::from_bytes(&[0xff, 0xfe, b'a', 0x80]).expect("opaque bytes are allowed"),
    );
    map.append("x-empty", HeaderValue::from_static(""));

    let list = HeaderList::new(&map);
    let abi = list.as_abi();
    assert_eq!(abi.len, 6);
    // SAFETY: `list` and `map` outlive the call.
    let back = unsafe { headers_from_abi(abi) }.expect("valid headers");

    let pairs = |m: &HeaderMap| -> Vec<(String, Vec<u8>)> {
        m.iter()
            .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
            .collect()
    };
    assert_eq!(pairs(&back), pairs(&map));
    let multi: Vec<_> = back.get_all("x-multi").iter().collect();
    assert_eq!(multi, ["one", "two", "three"]);
    assert_eq!(back["x-binary"].as_bytes(), [0xff, 0xfe, b'a', 0x80]);
}

#[test]
fn empty_and_null_header_arrays_are_empty() {
    let list = HeaderList::new(&HeaderMap::new());
    // SAFETY: `list` outlives the call.
    assert!(
        unsafe { headers_from_abi(list.as_abi()) }
            .expect("empty")
            .is_empty()
    );
    let null = AbiHeaders {
        ptr: ptr::null(),
        len: 0,
    };
    // SAFETY: null with length 0 is the ABI's empty array.
    assert!(unsafe { headers_from_abi(null) }.expect("empty").is_empty());
}

#[test]
fn invalid_headers_from_the_other_side_are_errors() {
    let header = |name: &'static [u8], value: &'static [u8]| AbiHeader {
        name: AbiStr::new(name),
        value: AbiStr::new(value),
    };
    let bad_name = [header(b"bad name", b"v")];
    let bad_value = [header(b"x-ok", b"line\nbreak")];
    let as_abi = |list: &[AbiHeader]| AbiHeaders {
        ptr: list.as_ptr(),
        len: list.len(),
    };
    // SAFETY: the arrays and the static bytes outlive the calls.
    unsafe {
        assert_eq!(
            headers_from_abi(as_abi(&bad_name)),
            Err(BoundaryError("invalid header name \"bad name\"".to_owned()))
        );
        assert_eq!(
            headers_from_abi(as_abi(&bad_value)),
            Err(BoundaryError("invalid value for header x-ok".to_owned()))
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Owned buffers
// ---------------------------------------------------------------------------------------------

#[test]
fn buf_from_string_reads_back() {
    let buf = AbiBuf::from_string("héllo, wörld".to_owned());
    assert!(buf.release.is_some());
    // SAFETY: just made, received once.
    assert_eq!(unsafe { buf.into_string_lossy() }, "héllo, wörld");

    let empty = AbiBuf::from_string(String::new());
    assert!(empty.release.is_none() && empty.ptr.is_null() && empty.len == 0);
    // SAFETY: as above.
    assert_eq!(unsafe { empty.into_string_lossy() }, "");
}

#[test]
fn buf_into_string_lossy_replaces_invalid_utf8() {
    let buf = AbiBuf::from_bytes(Bytes::from_static(b"ok \xff\xfe"));
    // SAFETY: just made, received once.
    assert_eq!(unsafe { buf.into_string_lossy() }, "ok \u{fffd}\u{fffd}");
}

#[test]
fn buf_is_zero_copy_and_released_exactly_once() {
    let drops = Drops::default();
    let bytes = drops.bytes(b"owned by the producer");
    let data_ptr = bytes.as_ptr();
    let buf = AbiBuf::from_bytes(bytes);
    assert_eq!(buf.ptr, data_ptr, "no copy on the way out");
    assert_eq!(drops.count(), 0);

    // SAFETY: just made, received once.
    let received = unsafe { buf.into_bytes() };
    assert_eq!(received.as_ptr(), data_ptr, "no copy on the way in");
    assert_eq!(received, "owned by the producer");
    let clone = received.clone();
    drop(received);
    assert_eq!(drops.count(), 0, "a clone still holds the buffer");
    drop(clone);
    assert_eq!(drops.count(), 1);
}

#[test]
fn a_chunk_read_in_place_is_released_once_whether_written_out_or_made_bytes() {
    use bytes::Buf as _;
    let drops = Drops::default();
    let stream = stream_of(vec![
        Ok(drops.bytes(b"first chunk")),
        Ok(drops.bytes(b"second")),
    ]);
    let mut body = receive(AbiBody::from_stream(stream, None));
    let mut cx = Context::from_waker(Waker::noop());

    let Poll::Ready(Some(Ok(mut first))) = body.poll_chunk_in_place(&mut cx) else {
        panic!("a chunk");
    };
    assert_eq!(first.remaining(), 11);
    first.advance(6);
    assert_eq!(first.chunk(), b"chunk");
    // Made `Bytes` after a partial write: only what is left.
    let rest = first.into_bytes();
    assert_eq!(rest, "chunk");
    assert_eq!(drops.count(), 0, "the Bytes holds the chunk");
    drop(rest);
    assert_eq!(drops.count(), 1);

    let Poll::Ready(Some(Ok(mut second))) = body.poll_chunk_in_place(&mut cx) else {
        panic!("a chunk");
    };
    second.advance(6);
    assert_eq!(second.remaining(), 0);
    drop(second);
    assert_eq!(drops.count(), 2);
    assert!(matches!(
        body.poll_chunk_in_place(&mut cx),
        Poll::Ready(None)
    ));
}

#[test]
fn static_buf_without_release_is_read_in_place() {
    static TEXT: &[u8] = b"static";
    let buf = AbiBuf {
        ptr: TEXT.as_ptr(),
        len: TEXT.len(),
        owner: ptr::null_mut(),
        release: None,
    };
    // SAFETY: static data, nothing to release.
    assert_eq!(unsafe { buf.into_bytes() }, "static");
}

// ---------------------------------------------------------------------------------------------
// Bodies
// ---------------------------------------------------------------------------------------------

#[test]
fn empty_body() {
    let body = receive(AbiBody::empty());
    assert!(body.is_end());
    assert_eq!(body.len_hint(), Some(0));
    assert_eq!(read_all(body), (vec![], None));

    // An empty buffer becomes the empty body rather than a stream of one empty chunk.
    let full = AbiBody::full(Bytes::new());
    assert!(full.poll_chunk.is_none() && full.drop.is_none());
}

#[test]
fn single_chunk_body() {
    let drops = Drops::default();
    let abi = AbiBody::full(drops.bytes(b"one chunk"));
    assert_eq!(abi.len_hint, 9);
    let body = receive(abi);
    assert!(!body.is_end());
    assert_eq!(body.len_hint(), Some(9));
    let (chunks, error) = read_all(body);
    assert_eq!(
        (chunks.as_slice(), error),
        (&[Bytes::from("one chunk")][..], None)
    );
    drop(chunks);
    assert_eq!(drops.count(), 1, "the chunk was released exactly once");
}

#[test]
fn many_chunk_body_arrives_in_order() {
    let drops = Drops::default();
    let chunks: Vec<_> = (0..100)
        .map(|i| Ok(Bytes::from(format!("chunk {i};"))))
        .chain([Ok(drops.bytes(b"last"))])
        .collect();
    let expected: String = (0..100).map(|i| format!("chunk {i};")).collect::<String>() + "last";
    let body = receive(AbiBody::from_stream(stream_of(chunks), None));
    assert_eq!(body.len_hint(), None);

    let (chunks, error) = read_all(body);
    assert_eq!(error, None);
    assert_eq!(chunks.len(), 101);
    assert_eq!(chunks.concat(), expected.as_bytes());
    drop(chunks);
    assert_eq!(drops.count(), 1);
}

#[test]
fn len_hint_crosses_the_boundary() {
    let known = receive(AbiBody::from_stream(stream_of(vec![]), Some(42)));
    assert_eq!(known.len_hint(), Some(42));
    assert_eq!(http_body::Body::size_hint(&known).exact(), Some(42));

    let unknown = receive(AbiBody::from_stream(stream_of(vec![]), None));
    assert_eq!(unknown.len_hint(), None);
    assert_eq!(http_body::Body::size_hint(&unknown).exact(), None);
}

#[test]
fn empty_chunks_are_skipped() {
    let chunks = vec![Ok(Bytes::new()), Ok(Bytes::from("a")), Ok(Bytes::new())];
    let (chunks, error) = read_all(receive(AbiBody::from_stream(stream_of(chunks), None)));
    assert_eq!((chunks, error), (vec![Bytes::from("a")], None));
}

#[test]
fn error_chunk_ends_the_body_with_its_message() {
    let chunks = vec![
        Ok(Bytes::from("before")),
        Err(BodyError::new("upstream reset")),
        Ok(Bytes::from("never read")),
    ];
    let mut body = receive(AbiBody::from_stream(stream_of(chunks), None));
    let (first, second, third) = block_on(async {
        let first = body.next().await;
        let second = body.next().await;
        (first, second, body.next().await)
    });
    assert_eq!(first, Some(Ok(Bytes::from("before"))));
    assert_eq!(second, Some(Err(BodyError::new("upstream reset"))));
    assert_eq!(third, None, "nothing is read after an error");
    assert!(body.is_end());
}

#[test]
fn panicking_stream_becomes_an_error_chunk() {
    let panicking = stream::iter([0, 1]).map(|i| match i {
        0 => Ok(Bytes::from("partial")),
        _ => panic!("boom in the body"),
    });
    let abi = AbiBody::from_stream(Box::pin(panicking), None);

    let first = poll_raw(&abi);
    assert_eq!(first.tag, CHUNK_DATA);
    // SAFETY: the chunk is owned by us and released once.
    assert_eq!(unsafe { first.data.into_bytes() }, "partial");

    let second = poll_raw(&abi);
    assert_eq!(second.tag, CHUNK_ERROR);
    // SAFETY: as above.
    let message = unsafe { second.data.into_string_lossy() };
    // Once the plugin's panic hook is installed (by any glue test), the location follows.
    assert!(
        message.starts_with("body stream panicked: boom in the body"),
        "{message:?}"
    );
    drop_raw(abi);
}

#[test]
fn panicking_stream_reads_as_a_body_error() {
    let panicking = stream::iter([0]).map(|_| -> Result<Bytes, BodyError> { panic!("kaboom") });
    let (chunks, error) = read_all(receive(AbiBody::from_stream(Box::pin(panicking), None)));
    assert!(chunks.is_empty());
    let message = error.expect("an error chunk").to_string();
    assert!(
        message.starts_with("body stream panicked: kaboom"),
        "{message:?}"
    );
}

#[test]
fn pending_stream_is_pending_across_the_boundary() {
    let abi = AbiBody::from_stream(Box::pin(stream::pending()), None);
    let polled = poll_raw(&abi);
    assert_eq!(polled.tag, CHUNK_PENDING);
    assert!(polled.data.release.is_none());
    let mut body = receive(abi);
    let mut cx = Context::from_waker(Waker::noop());
    assert!(body.poll_chunk(&mut cx).is_pending());
}

#[test]
fn body_state_is_dropped_exactly_once() {
    // Read to the end, dropped early, and never read: the producer's state is freed once each time.
    for reads in [usize::MAX, 1, 0] {
        let witness = Arc::new(());
        let held = Arc::clone(&witness);
        let chunks = stream::iter(0..3).map(move |i| {
            let _keep = &held;
            Ok(Bytes::from(format!("{i}")))
        });
        let body = receive(AbiBody::from_stream(Box::pin(chunks), None));
        assert_eq!(Arc::strong_count(&witness), 2);
        let taken: Vec<_> = block_on(body.take(reads).collect());
        assert_eq!(taken.len(), reads.min(3));
        assert_eq!(Arc::strong_count(&witness), 1, "after {reads} reads");
    }
}

#[test]
fn foreign_body_forwards_unchanged() {
    let chunks = vec![Ok(Bytes::from("a")), Ok(Bytes::from("b"))];
    let mut body = receive(AbiBody::from_stream(stream_of(chunks), Some(2)));
    assert_eq!(block_on(body.next()), Some(Ok(Bytes::from("a"))));
    // Handing the rest on (e.g. an upstream body streamed into the app's response).
    let forwarded = receive(body.into_abi());
    // What is left, not the original length: a content-length from the old hint would promise
    // a byte that never comes.
    assert_eq!(forwarded.len_hint(), Some(1));
    assert_eq!(read_all(forwarded), (vec![Bytes::from("b")], None));

    // A finished body forwards as a finished one and is never polled again.
    let mut done = receive(AbiBody::full(Bytes::from("x")));
    let _ = block_on((&mut done).collect::<Vec<_>>());
    let again = done.into_abi();
    assert!(again.poll_chunk.is_none() && again.drop.is_some());
    drop_raw(again);
}

// ---------------------------------------------------------------------------------------------
// Responses
// ---------------------------------------------------------------------------------------------

#[test]
fn response_round_trips() {
    let mut headers = HeaderMap::new();
    headers.append("set-cookie", HeaderValue::from_static("a=1"));
    headers.append("set-cookie", HeaderValue::from_static("b=2"));
    headers.append(
        "x-raw",
        HeaderValue::from_bytes(&[0xff, 0xfe]).expect("opaque bytes"),
    );
    let abi = AbiResponse::new(
        StatusCode::IM_A_TEAPOT,
        headers.clone(),
        AbiBody::full(Bytes::from("short and stout")),
    );
    assert_eq!(abi.status, 418);
    assert_eq!(abi.headers.len, 3);

    // SAFETY: just made, received once.
    let (status, back, body) = unsafe { abi.into_parts() }.expect("valid response");
    assert_eq!(status, StatusCode::IM_A_TEAPOT);
    assert_eq!(back, headers);
    let cookies: Vec<_> = back.get_all("set-cookie").iter().collect();
    assert_eq!(cookies, ["a=1", "b=2"]);
    assert_eq!(back["x-raw"].as_bytes(), [0xff, 0xfe]);
    assert_eq!(body.len_hint(), Some(15));
    assert_eq!(read_all(body), (vec![Bytes::from("short and stout")], None));
}

#[test]
fn a_whole_answer_is_one_block_freed_after_its_last_holder_in_any_order() {
    let drops = Drops::default();
    let answer = || {
        crate::Response::text(drops.bytes(b"hello"))
            .with_header(
                http::header::ETAG,
                HeaderValue::from_bytes(b"\"v1\"").expect("value"),
            )
            .into_abi()
    };

    // Headers released first, then the body read to its end and dropped.
    // SAFETY: just made, received once.
    let (status, headers, body) = unsafe { answer().into_parts() }.expect("valid");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["etag"], "\"v1\"");
    assert_eq!(headers[CONTENT_TYPE], "text/plain; charset=utf-8");
    assert_eq!(body.len_hint(), Some(5));
    assert_eq!(drops.count(), 0, "the body still holds the block");
    assert_eq!(read_all(body), (vec![Bytes::from("hello")], None));
    assert_eq!(drops.count(), 1);

    // The chunk outlives the body and the response.
    let abi = answer();
    let chunk = poll_raw(&abi.body);
    assert_eq!(chunk.tag, CHUNK_DATA);
    // SAFETY: just made, received once.
    let parts = unsafe { abi.into_parts() }.expect("valid");
    drop(parts);
    assert_eq!(drops.count(), 1, "the chunk still holds the block");
    // SAFETY: the chunk is ours under the owned-buffer contract.
    let data = unsafe { chunk.data.into_bytes() };
    assert_eq!(data, "hello");
    drop(data);
    assert_eq!(drops.count(), 2);

    // An empty answer with headers only: no body, and the headers are still freed.
    // SAFETY: just made, received once.
    let (_, headers, body) = unsafe {
        crate::Response::new(StatusCode::NO_CONTENT)
            .into_abi()
            .into_parts()
    }
    .expect("valid");
    assert!(headers.is_empty());
    assert!(body.is_end());
}

static RESPONSE_RELEASES: AtomicUsize = AtomicUsize::new(0);

unsafe extern "C" fn count_response_release(owner: *mut c_void) {
    // SAFETY: `owner` is the `Box<HeaderList>` made in `counted_response`.
    drop(unsafe { Box::from_raw(owner.cast::<HeaderList>()) });
    RESPONSE_RELEASES.fetch_add(1, Ordering::SeqCst);
}

/// Counts the releases of `lent_response`s apart from `counted_response`s: tests run at once.
static LENT_RELEASES: AtomicUsize = AtomicUsize::new(0);

unsafe extern "C" fn count_lent_release(owner: *mut c_void) {
    // SAFETY: `owner` is the `Box<HeaderList>` made in `lent_response`.
    drop(unsafe { Box::from_raw(owner.cast::<HeaderList>()) });
    LENT_RELEASES.fetch_add(1, Ordering::SeqCst);
}

/// A response whose header storage counts its releases, with headers borrowed from `map`.
fn counted_response(status: u16, map: &'static HeaderMap, body: AbiBody) -> AbiResponse {
    response_released_by(count_response_release, status, map, body)
}

/// The same, counted in [`LENT_RELEASES`].
fn lent_response(status: u16, map: &'static HeaderMap, body: AbiBody) -> AbiResponse {
    response_released_by(count_lent_release, status, map, body)
}

fn response_released_by(
    release: unsafe extern "C" fn(*mut c_void),
    status: u16,
    map: &'static HeaderMap,
    body: AbiBody,
) -> AbiResponse {
    let list = Box::new(HeaderList::new(map));
    AbiResponse {
        status,
        headers: list.as_abi(),
        body,
        owner: Box::into_raw(list).cast(),
        release: Some(release),
    }
}

#[test]
fn response_parts_are_released_once_even_when_invalid() {
    let map: &'static HeaderMap = Box::leak(Box::new(HeaderMap::from_iter([(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain"),
    )])));
    let before = RESPONSE_RELEASES.load(Ordering::SeqCst);

    let witness = Arc::new(());
    let held = Arc::clone(&witness);
    let body = stream::iter([0]).map(move |_| {
        let _keep = &held;
        Ok(Bytes::new())
    });
    let abi = counted_response(200, map, AbiBody::from_stream(Box::pin(body), None));
    // SAFETY: just made, received once.
    let (status, headers, body) = unsafe { abi.into_parts() }.expect("valid");
    assert_eq!((status, &headers), (StatusCode::OK, map));
    assert_eq!(RESPONSE_RELEASES.load(Ordering::SeqCst), before + 1);
    drop(body);
    assert_eq!(Arc::strong_count(&witness), 1);

    // An invalid status is an error, and the headers and the body are released all the same.
    let held = Arc::clone(&witness);
    let body = stream::iter([0]).map(move |_| {
        let _keep = &held;
        Ok(Bytes::new())
    });
    let abi = counted_response(1000, map, AbiBody::from_stream(Box::pin(body), None));
    // SAFETY: as above.
    let err = unsafe { abi.into_parts() }.expect_err("status 1000 is invalid");
    assert_eq!(err, BoundaryError("invalid status code 1000".to_owned()));
    assert_eq!(RESPONSE_RELEASES.load(Ordering::SeqCst), before + 2);
    assert_eq!(Arc::strong_count(&witness), 1);
}

#[test]
fn a_fetch_responses_headers_are_read_in_place_and_released_once_when_dropped() {
    let map: &'static HeaderMap = Box::leak(Box::new(HeaderMap::from_iter([
        (CONTENT_TYPE, HeaderValue::from_static("text/plain")),
        (
            http::header::HeaderName::from_static("x-opaque"),
            HeaderValue::from_bytes(b"a\xffb").expect("opaque"),
        ),
    ])));
    let before = LENT_RELEASES.load(Ordering::SeqCst);
    let abi = lent_response(200, map, AbiBody::full(Bytes::from("upstream")));
    let response = fetch_result(AbiFetchOutcome::ok(abi), None).expect("ok");
    assert_eq!(
        LENT_RELEASES.load(Ordering::SeqCst),
        before,
        "lent until the response is dropped"
    );
    assert_eq!(response.headers(), map);
    assert_eq!(response.headers(), map, "the map is built once");
    let body = response.into_body();
    assert_eq!(LENT_RELEASES.load(Ordering::SeqCst), before + 1);
    assert_eq!(block_on(body.text()).expect("body"), "upstream");
    assert_eq!(LENT_RELEASES.load(Ordering::SeqCst), before + 1);

    // An error outcome releases nothing twice either.
    let abi = lent_response(1000, map, AbiBody::empty());
    let err = fetch_result(AbiFetchOutcome::ok(abi), None).expect_err("invalid status");
    assert_eq!(err.message(), "invalid response: invalid status code 1000");
    assert_eq!(LENT_RELEASES.load(Ordering::SeqCst), before + 2);
}

// ---------------------------------------------------------------------------------------------
// Outcomes
// ---------------------------------------------------------------------------------------------

#[test]
fn handle_outcome_ok_into_result() {
    let response = AbiResponse::new(
        StatusCode::CREATED,
        HeaderMap::new(),
        AbiBody::full(Bytes::from("made")),
    );
    // SAFETY: just made, received once.
    let (status, headers, body) =
        unsafe { AbiHandleOutcome::ok(response).into_result() }.expect("ok outcome");
    assert_eq!(status, StatusCode::CREATED);
    assert!(headers.is_empty());
    assert_eq!(read_all(body), (vec![Bytes::from("made")], None));
}

#[test]
fn handle_outcome_failures_into_result() {
    let result = |outcome: AbiHandleOutcome| {
        // SAFETY: just made, received once.
        unsafe { outcome.into_result() }.map(|(status, ..)| status)
    };
    assert_eq!(
        result(AbiHandleOutcome::failed(
            OUTCOME_PANICKED,
            "boom".to_owned()
        )),
        Err(HandleFailure::Panicked("boom".to_owned()))
    );
    assert_eq!(
        result(AbiHandleOutcome::failed(
            OUTCOME_ERROR,
            "bad request".to_owned()
        )),
        Err(HandleFailure::Invalid("bad request".to_owned()))
    );
    assert_eq!(
        result(AbiHandleOutcome::failed(7, "?".to_owned())),
        Err(HandleFailure::Invalid("unknown outcome tag 7".to_owned()))
    );
    let mut bad_status = AbiHandleOutcome::ok(AbiResponse::new(
        StatusCode::OK,
        HeaderMap::new(),
        AbiBody::empty(),
    ));
    bad_status.response.status = 42;
    assert_eq!(
        result(bad_status),
        Err(HandleFailure::Invalid("invalid status code 42".to_owned()))
    );
}

#[test]
fn fetch_outcome_into_result() {
    let ok = AbiFetchOutcome::ok(AbiResponse::new(
        StatusCode::NOT_FOUND,
        HeaderMap::new(),
        AbiBody::empty(),
    ));
    // SAFETY: just made, received once.
    let (status, _, body) = unsafe { ok.into_result() }.expect("ok outcome");
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body.is_end());

    let failed = AbiFetchOutcome::failed(FETCH_TIMEOUT, "no answer in 5 s".to_owned());
    // SAFETY: as above.
    let err = unsafe { failed.into_result() }
        .map(|_| ())
        .expect_err("failed");
    assert_eq!(err, (FETCH_TIMEOUT, "no answer in 5 s".to_owned()));
}

#[test]
fn fetch_result_maps_tags_to_kinds() {
    use crate::FetchErrorKind as Kind;
    let cases = [
        (FETCH_INVALID_REQUEST, Kind::InvalidRequest),
        (FETCH_CONNECT, Kind::Connect),
        (FETCH_TIMEOUT, Kind::Timeout),
        (FETCH_DENIED, Kind::Denied),
        (FETCH_OTHER, Kind::Other),
        (99, Kind::Other),
    ];
    for (tag, kind) in cases {
        let err = fetch_result(AbiFetchOutcome::failed(tag, format!("tag {tag}")), None)
            .expect_err("failed");
        assert_eq!(
            (err.kind(), err.message()),
            (kind, format!("tag {tag}").as_str())
        );
    }
    let ok = AbiFetchOutcome::ok(AbiResponse::new(
        StatusCode::OK,
        HeaderMap::new(),
        AbiBody::full(Bytes::from("upstream")),
    ));
    let response = fetch_result(ok, None).expect("ok");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(block_on(response.text()).expect("body"), "upstream");
}

// ---------------------------------------------------------------------------------------------
// Socket addresses
// ---------------------------------------------------------------------------------------------

#[test]
fn socket_addrs_round_trip() {
    let addrs: [SocketAddr; 4] = [
        "192.0.2.7:8080".parse().expect("v4"),
        "0.0.0.0:0".parse().expect("v4"),
        "[2001:db8::1]:443".parse().expect("v6"),
        "[fe80::1%3]:65535".parse().expect("v6 with scope"),
    ];
    for addr in addrs {
        let abi = socket_addr_to_abi(Some(addr));
        assert_eq!(socket_addr_from_abi(&abi), Some(addr));
    }
    let v4 = socket_addr_to_abi(Some("10.1.2.3:9".parse().expect("v4")));
    assert_eq!(
        (v4.family, v4.port, &v4.ip[..4]),
        (ADDR_V4, 9, &[10, 1, 2, 3][..])
    );
    let v6 = socket_addr_to_abi(Some("[fe80::1%3]:1".parse().expect("v6")));
    assert_eq!((v6.family, v6.scope_id), (ADDR_V6, 3));

    let none = socket_addr_to_abi(None);
    assert_eq!(none.family, ADDR_NONE);
    assert_eq!(socket_addr_from_abi(&none), None);
    let unknown = AbiSocketAddr { family: 9, ..none };
    assert_eq!(socket_addr_from_abi(&unknown), None);
}

// ---------------------------------------------------------------------------------------------
// The whole handler glue: a descriptor called the way the host calls it
// ---------------------------------------------------------------------------------------------

/// The per-request host context of the fake host below.
#[derive(Default)]
struct FakeCtx {
    logs: Mutex<Vec<(u32, String)>>,
    fetched: Mutex<Vec<String>>,
}

/// Each `ctx` reference is one `Arc<FakeCtx>` strong count.
fn ctx_ref<'a>(ctx: *mut c_void) -> &'a FakeCtx {
    // SAFETY: `ctx` came from `Arc::into_raw` and its reference is still held by the caller.
    unsafe { &*ctx.cast::<FakeCtx>() }
}

unsafe extern "C" fn fake_clone_ctx(ctx: *mut c_void) -> *mut c_void {
    // SAFETY: `ctx` is a live `Arc<FakeCtx>` reference.
    unsafe { Arc::increment_strong_count(ctx.cast::<FakeCtx>()) };
    ctx
}

unsafe extern "C" fn fake_drop_ctx(ctx: *mut c_void) {
    // SAFETY: the plugin releases each reference it owns once.
    unsafe { Arc::decrement_strong_count(ctx.cast::<FakeCtx>()) };
}

unsafe extern "C" fn fake_log(ctx: *mut c_void, level: u32, msg: AbiStr) {
    // SAFETY: `msg` is borrowed for this call.
    let msg = unsafe { msg.to_str("log message") }.expect("UTF-8");
    let mut logs = ctx_ref(ctx).logs.lock().expect("lock");
    logs.push((level, msg.to_owned()));
}

unsafe extern "C" fn fake_sleep(_ctx: *mut c_void, _nanos: u64) -> FfiFuture<u32> {
    std::future::ready(0).into_ffi()
}

unsafe extern "C" fn fake_fetch(
    ctx: *mut c_void,
    req: *const AbiFetchRequest,
    body: AbiBody,
) -> FfiFuture<AbiFetchOutcome> {
    drop(receive(body));
    // SAFETY: `req` is borrowed for this call.
    let url = unsafe { (*req).url.to_str("url") }.expect("UTF-8");
    ctx_ref(ctx)
        .fetched
        .lock()
        .expect("lock")
        .push(url.to_owned());
    let outcome = if url.contains("refused") {
        AbiFetchOutcome::failed(FETCH_CONNECT, format!("{url} refused"))
    } else {
        AbiFetchOutcome::ok(AbiResponse::new(
            StatusCode::OK,
            HeaderMap::new(),
            AbiBody::full(Bytes::from("upstream")),
        ))
    };
    std::future::ready(outcome).into_ffi()
}

static FAKE_VTABLE: HostVTable = HostVTable {
    size: std::mem::size_of::<HostVTable>(),
    clone_ctx: fake_clone_ctx,
    drop_ctx: fake_drop_ctx,
    log: fake_log,
    sleep: fake_sleep,
    fetch: fake_fetch,
    time_left_ms: fake_time_left_ms,
    max_buffered_response: fake_max_buffered_response,
};

unsafe extern "C" fn fake_max_buffered_response(_ctx: *mut c_void) -> u64 {
    NO_LIMIT
}

unsafe extern "C" fn fake_time_left_ms(_ctx: *mut c_void) -> u64 {
    1500
}

struct GlueApp;

impl App for GlueApp {
    fn handle(mut req: crate::Request, host: crate::Host) -> crate::__private::HandleFuture {
        crate::__private::serve(async move {
            if req.path() == "/panic" {
                panic!("boom in the handler");
            }
            host.sleep(std::time::Duration::from_millis(1)).await;
            crate::info!(host, "handling {}", req.path());
            let upstream = match host.get("http://upstream.test/").await {
                Ok(upstream) => upstream.text().await.expect("upstream body"),
                Err(err) => err.to_string(),
            };
            let refused = host.get("http://refused.test/").await.expect_err("refused");
            let body = req.text().await.expect("request body");
            let summary = format!(
                "{} {} prefix={} path={} query={} version={:?} peer={:?} x-a={:?} body={} \
                 upstream={} refused={}",
                req.method(),
                req.uri(),
                req.mount_prefix(),
                req.path(),
                req.query(),
                req.version(),
                req.peer_addr(),
                req.headers().get_all("x-a").iter().collect::<Vec<_>>(),
                body,
                upstream,
                refused,
            );
            crate::Response::text(summary).with_status(StatusCode::ACCEPTED)
        })
    }
}

static GLUE_DESCRIPTOR: Descriptor = Descriptor::new::<GlueApp>("glue", "1.2.3");

/// Calls the descriptor's handler the way the host does and waits for its outcome.
fn call_glue(method: &str, path: &str, body: AbiBody) -> (AbiHandleOutcome, Arc<FakeCtx>) {
    let mut headers = HeaderMap::new();
    headers.append("x-a", HeaderValue::from_static("1"));
    headers.append("x-a", HeaderValue::from_bytes(b"\xff").expect("opaque"));
    let list = HeaderList::new(&headers);
    let uri = format!("/glue{path}?q=1");
    let req = AbiRequest {
        method: AbiStr::new(method.as_bytes()),
        uri: AbiStr::new(uri.as_bytes()),
        version: HTTP_2,
        headers: list.as_abi(),
        peer_addr: socket_addr_to_abi(Some("192.0.2.1:5000".parse().expect("v4"))),
        local_addr: socket_addr_to_abi(None),
        mount_prefix: AbiStr::new(b"/glue"),
        path: AbiStr::new(path.as_bytes()),
        query: AbiStr::new(b"q=1"),
    };
    let ctx = Arc::new(FakeCtx::default());
    let host = AbiHost {
        vtable: &FAKE_VTABLE,
        ctx: Arc::into_raw(Arc::clone(&ctx)).cast_mut().cast(),
    };
    // SAFETY: the descriptor is a static; `req` outlives the call; `body` and `host` move.
    let descriptor = unsafe { &*GLUE_DESCRIPTOR.as_ptr() };
    // SAFETY: as above.
    let future = unsafe { (descriptor.handle)(&req, body, host) };
    (block_on(future), ctx)
}

#[test]
fn descriptor_header_is_current() {
    // SAFETY: a static.
    let descriptor = unsafe { &*GLUE_DESCRIPTOR.as_ptr() };
    let header = descriptor.header;
    assert_eq!(header.magic, MAGIC);
    assert_eq!((header.abi_major, header.abi_minor), (ABI_MAJOR, ABI_MINOR));
    assert_eq!(header.layout_fingerprint, LAYOUT_FINGERPRINT);
    assert_eq!(header.size, std::mem::size_of::<AppDescriptor>() as u64);
    // SAFETY: static strings.
    unsafe {
        assert_eq!(descriptor.name.to_str("name"), Ok("glue"));
        assert_eq!(descriptor.version.to_str("version"), Ok("1.2.3"));
        assert_eq!(
            descriptor.sdk_version.to_str("sdk"),
            Ok(env!("CARGO_PKG_VERSION"))
        );
    }
}

#[test]
fn handler_glue_round_trips_a_request() {
    let (outcome, ctx) = call_glue("POST", "/x", AbiBody::full(Bytes::from("payload")));
    // SAFETY: the outcome is ours.
    let (status, headers, body) = unsafe { outcome.into_result() }.expect("ok outcome");
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(headers[CONTENT_TYPE], "text/plain; charset=utf-8");
    let (chunks, error) = read_all(body);
    assert_eq!(error, None);
    assert_eq!(
        String::from_utf8_lossy(&chunks.concat()),
        "POST /glue/x?q=1 prefix=/glue path=/x query=q=1 version=HTTP/2.0 \
         peer=Some(192.0.2.1:5000) x-a=[\"1\", \"\\xff\"] body=payload upstream=upstream \
         refused=connect error: http://refused.test/ refused"
    );
    assert_eq!(
        *ctx.logs.lock().expect("lock"),
        [(LOG_INFO, "handling /x".to_owned())]
    );
    assert_eq!(
        *ctx.fetched.lock().expect("lock"),
        ["http://upstream.test/", "http://refused.test/"]
    );
    assert_eq!(
        Arc::strong_count(&ctx),
        1,
        "every host reference was released"
    );
}

#[test]
fn handler_panic_is_an_outcome() {
    let witness = Arc::new(());
    let held = Arc::clone(&witness);
    let body = stream::iter([0]).map(move |_| {
        let _keep = &held;
        Ok(Bytes::new())
    });
    let (outcome, ctx) = call_glue("GET", "/panic", AbiBody::from_stream(Box::pin(body), None));
    assert_eq!(outcome.tag, OUTCOME_PANICKED);
    // SAFETY: the outcome is ours.
    let result = unsafe { outcome.into_result() }.map(|_| ());
    // The glue installed the panic hook, so the message carries the panic's location.
    let Err(HandleFailure::Panicked(message)) = result else {
        panic!("expected a panic outcome, got {result:?}");
    };
    assert!(
        message.starts_with("boom in the handler (at app-api/src/ffi/tests.rs:"),
        "{message:?}"
    );
    assert_eq!(Arc::strong_count(&ctx), 1);
    assert_eq!(
        Arc::strong_count(&witness),
        1,
        "the request body was released"
    );
}

#[test]
fn unreadable_request_is_an_error_outcome() {
    let witness = Arc::new(());
    let held = Arc::clone(&witness);
    let body = stream::iter([0]).map(move |_| {
        let _keep = &held;
        Ok(Bytes::new())
    });
    let (outcome, ctx) = call_glue(
        "BAD METHOD",
        "/x",
        AbiBody::from_stream(Box::pin(body), None),
    );
    // SAFETY: the outcome is ours.
    let result = unsafe { outcome.into_result() }.map(|_| ());
    assert_eq!(
        result,
        Err(HandleFailure::Invalid(
            "bad request: invalid method".to_owned()
        ))
    );
    assert_eq!(Arc::strong_count(&ctx), 1);
    assert_eq!(Arc::strong_count(&witness), 1);
}

#[test]
fn exhausted_body_stays_ended() {
    let mut body = receive(AbiBody::full(Bytes::from("x")));
    let mut cx = Context::from_waker(Waker::noop());
    assert_eq!(
        body.poll_chunk(&mut cx),
        Poll::Ready(Some(Ok(Bytes::from("x"))))
    );
    assert_eq!(body.poll_chunk(&mut cx), Poll::Ready(None));
    assert!(body.is_end());
    assert_eq!(body.poll_chunk(&mut cx), Poll::Ready(None));
}

#[test]
fn a_body_of_known_length_ends_after_its_last_byte() {
    use http_body::Body as _;
    // hyper asks `is_end_stream` after each chunk: true at the last byte lets HTTP/2 end the
    // stream with that data frame instead of an empty one after it.
    let mut body = receive(AbiBody::full(Bytes::from("xy")));
    assert!(!body.is_end_stream());
    assert_eq!(http_body::Body::size_hint(&body).exact(), Some(2));
    assert_eq!(block_on(body.next()), Some(Ok(Bytes::from("xy"))));
    assert!(body.is_end_stream());
    assert_eq!(http_body::Body::size_hint(&body).exact(), Some(0));
    // Polled anyway, it ends.
    assert_eq!(block_on(body.next()), None);

    // Without a known length only the producer's END ends it.
    let chunks = vec![Ok(Bytes::from("a"))];
    let mut body = receive(AbiBody::from_stream(stream_of(chunks), None));
    assert_eq!(block_on(body.next()), Some(Ok(Bytes::from("a"))));
    assert!(!body.is_end_stream());
    assert_eq!(block_on(body.next()), None);
    assert!(body.is_end_stream());
}

/// A future that stays pending until opened, keeping the waker it was last polled with.
#[derive(Clone, Default)]
struct Gate(Arc<Mutex<(bool, Option<Waker>)>>);

impl Gate {
    fn wait(&self) -> impl Future<Output = u32> + Send + 'static {
        let gate = self.clone();
        std::future::poll_fn(move |cx| {
            let mut state = gate.0.lock().expect("gate");
            if state.0 {
                return Poll::Ready(7);
            }
            state.1 = Some(cx.waker().clone());
            Poll::Pending
        })
    }

    fn kept(&self) -> Option<Waker> {
        self.0.lock().expect("gate").1.clone()
    }

    fn open(&self) {
        let waker = {
            let mut state = self.0.lock().expect("gate");
            state.0 = true;
            state.1.take()
        };
        waker.expect("polled before").wake();
    }
}

/// A waker that counts its wake-ups.
#[derive(Default)]
struct CountingWake(AtomicUsize);

impl std::task::Wake for CountingWake {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn a_waker_that_crosses_back_to_its_maker_arrives_as_itself() {
    let counter = Arc::new(CountingWake::default());
    let waker = Waker::from(Arc::clone(&counter));
    let gate = Gate::default();
    // As the host polls an app's future, which polls a host future with the same context.
    let inner = FfiFuture::new(gate.wait());
    let mut outer = FfiFuture::new(async move { inner.await + 1 });
    let mut cx = Context::from_waker(&waker);
    assert!(Pin::new(&mut outer).poll(&mut cx).is_pending());
    let kept = gate.kept().expect("polled");
    assert!(
        kept.will_wake(&waker),
        "the innermost future got the poller's own waker"
    );
    gate.open();
    assert_eq!(counter.0.load(Ordering::SeqCst), 1);
    assert_eq!(Pin::new(&mut outer).poll(&mut cx), Poll::Ready(8));
}

#[test]
fn futures_and_wakers_of_async_ffi_interoperate() {
    // Plugins built before Berth had its own types made and polled async-ffi's. The layouts
    // are the same; these check the behaviour, in both directions.
    let counter = Arc::new(CountingWake::default());
    let waker = Waker::from(Arc::clone(&counter));
    let mut cx = Context::from_waker(&waker);

    // Theirs, polled as ours: our waker crosses to async-ffi's side, which clones and wakes it.
    let gate = Gate::default();
    let theirs = async_ffi::FfiFuture::new(gate.wait());
    // SAFETY: `FfiFuture` reproduces async-ffi's `FfiFuture` (ABI version 2) field for field.
    let mut ours: FfiFuture<u32> = unsafe { std::mem::transmute(theirs) };
    assert!(Pin::new(&mut ours).poll(&mut cx).is_pending());
    gate.open();
    assert_eq!(counter.0.load(Ordering::SeqCst), 1);
    assert_eq!(Pin::new(&mut ours).poll(&mut cx), Poll::Ready(7));
    drop(ours);

    // Ours, polled as theirs: async-ffi's waker crosses to us; a clone of it wakes the poller.
    let gate = Gate::default();
    // SAFETY: as above.
    let mut theirs: async_ffi::FfiFuture<u32> =
        unsafe { std::mem::transmute(FfiFuture::new(gate.wait())) };
    assert!(Pin::new(&mut theirs).poll(&mut cx).is_pending());
    gate.open();
    assert_eq!(counter.0.load(Ordering::SeqCst), 2);
    assert_eq!(Pin::new(&mut theirs).poll(&mut cx), Poll::Ready(7));
}

#[test]
fn a_panicking_poll_is_reported_not_unwound_across() {
    let mut future = FfiFuture::new(std::future::poll_fn(|_| -> Poll<u32> { panic!("boom") }));
    let waker = Waker::noop();
    let mut cx = Context::from_waker(waker);
    let poll_fn = future.poll_fn;
    let fut_ptr = future.fut_ptr;
    // SAFETY: polling the future through its own function, as the other side would.
    let polled = cx.with_ffi_context(|fcx| unsafe { poll_fn(fut_ptr, fcx) });
    assert!(matches!(polled, FfiPoll::Panicked));
    // Polled as a Rust future, the panic resumes on this side.
    let resumed = catch_unwind(AssertUnwindSafe(|| Pin::new(&mut future).poll(&mut cx)));
    assert!(resumed.is_err());
    // Polled with `poll_caught` (as the host polls an app's future), it is an error instead.
    let mut future = FfiFuture::new(std::future::poll_fn(|_| -> Poll<u32> { panic!("boom") }));
    assert_eq!(future.poll_caught(&mut cx), Poll::Ready(Err(Panicked)));
    let mut ready = FfiFuture::new(std::future::ready(7_u32));
    assert_eq!(ready.poll_caught(&mut cx), Poll::Ready(Ok(7)));
}
