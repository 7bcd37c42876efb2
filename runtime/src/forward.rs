//! Invokes forwarded from a follower to the leader, over one long-lived
//! `Peer/ForwardStream` per leader address instead of one HTTP/2 call each.
//!
//! Why: with clients spread over the members, two writes in three arrive at
//! a follower. As unary calls, each paid a new HTTP/2 stream on both ends
//! (headers, HPACK, a task and the tower stack per call): measured at 256
//! clients as 20-40 µs of cluster CPU per write (clients on the leader only
//! against spread, `benches/README.md`). On a stream, calls and replies
//! travel in batches of whatever is queued, like the Raft messages do.
//!
//! Owns: the follower's side (links, ids, pending replies, batching) and the
//! error encoding both sides share. Never decides anything about a call: the
//! leader runs it exactly as a unary `ForwardInvoke` (`Core::invoke_forwarded`),
//! and a status crosses the stream unchanged, leader hint included.
//!
//! Every queue is bounded: calls waiting for a link (`LINK_QUEUE_CALLS`),
//! calls sent and not yet answered (`MAX_PENDING_CALLS`, on both ends),
//! batches buffered for the stream (`STREAM_BUFFER_BATCHES`). A call that
//! finds its link full is refused at once with RESOURCE_EXHAUSTED.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use prost::Message as _;
use synapse_proto::v1 as pb;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tracing::debug;

use crate::cluster::PeerChannels;
use crate::error::{LEADER_ADDR_HEADER, LEADER_HINT_HEADER};
use crate::metrics::Metrics;

/// Calls queued for one link before new ones are refused. A follower holds
/// at most `max_inflight_invokes` calls of its own anyway; this only keeps
/// one slow link from taking them all.
pub const LINK_QUEUE_CALLS: usize = 4096;
/// Calls sent on one stream and not yet answered. The leader enforces the
/// same bound on its end, so a peer cannot make it hold more.
pub const MAX_PENDING_CALLS: usize = 4096;
/// Calls per batch: enough to carry a full Raft Ready's worth of writes.
pub const MAX_CALLS_PER_BATCH: usize = 256;
/// Encoded bytes per batch, well under the 4 MiB peer frame limit
/// (`synapse_consensus::MAX_PEER_FRAME_BYTES`) that the leader decodes with.
pub const MAX_BATCH_BYTES: usize = 1024 * 1024;
/// A call larger than this goes as a unary `ForwardInvoke`, so an oversized
/// request fails alone instead of breaking a stream shared with others.
pub const MAX_STREAMED_CALL_BYTES: usize = MAX_BATCH_BYTES;
/// Batches buffered between the batching loop and the gRPC stream.
const STREAM_BUFFER_BATCHES: usize = 8;
/// Links kept at once (one per leader address seen); members are few.
const MAX_LINKS: usize = 16;
/// How long an address that does not serve `ForwardStream` (a member that
/// predates it, during a rolling upgrade) gets unary calls before the
/// stream is tried again.
const UNARY_FALLBACK: Duration = Duration::from_secs(60);

type Reply = Result<pb::InvokeResponse, Status>;

/// What a queued caller hears back from its link.
enum Answer {
    Replied(Reply),
    /// The leader does not serve `ForwardStream`: the call, never sent.
    NotServed(pb::ForwardInvokeRequest),
    /// The link ended before the call left: the call, never sent, to be
    /// tried on a new link (never reported as "may have run").
    NotSent(pb::ForwardInvokeRequest),
}

struct Queued {
    call: pb::ForwardInvokeRequest,
    /// `call.encoded_len()`, measured once by the caller.
    size: usize,
    reply: oneshot::Sender<Answer>,
}

enum Link {
    Stream(mpsc::Sender<Queued>),
    Unary { until: Instant },
}

/// The follower's links to leaders, by address.
pub(crate) struct Forwarder {
    links: Mutex<HashMap<String, Link>>,
    /// Link tasks run on the node's runtime, not on the caller's (an
    /// embedder's runtime may be short-lived).
    runtime: tokio::runtime::Handle,
    metrics: Arc<Metrics>,
}

impl Forwarder {
    pub fn new(runtime: tokio::runtime::Handle, metrics: Arc<Metrics>) -> Self {
        Forwarder {
            links: Mutex::new(HashMap::new()),
            runtime,
            metrics,
        }
    }

    /// Sends `call` to the leader at `address` and waits for its answer,
    /// which is exactly what a unary `ForwardInvoke` would have returned.
    pub async fn call(
        &self,
        channels: &PeerChannels,
        address: &str,
        mut call: pb::ForwardInvokeRequest,
    ) -> Reply {
        self.metrics.forwarded.fetch_add(1, Ordering::Relaxed);
        let size = call.encoded_len();
        if size > MAX_STREAMED_CALL_BYTES {
            return self.unary(channels, address, call).await;
        }
        // Twice at most: a link can end between the lookup and the send
        // (its stream broke), and then one new link is tried.
        for _ in 0..2 {
            let Some(queue) = self.link(channels, address)? else {
                return self.unary(channels, address, call).await;
            };
            let (tx, rx) = oneshot::channel();
            match queue.try_send(Queued {
                call,
                size,
                reply: tx,
            }) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    return Err(Status::resource_exhausted(format!(
                        "{LINK_QUEUE_CALLS} forwarded calls already queued for the leader at {address}"
                    )))
                }
                Err(mpsc::error::TrySendError::Closed(q)) => {
                    self.forget(address);
                    call = q.call;
                    continue;
                }
            }
            match rx.await {
                Ok(Answer::Replied(reply)) => return reply,
                Ok(Answer::NotServed(call)) => {
                    // The leader predates ForwardStream; the call never left.
                    self.fall_back_to_unary(address);
                    return self.unary(channels, address, call).await;
                }
                Ok(Answer::NotSent(unsent)) => {
                    self.forget(address);
                    call = unsent;
                }
                Err(_) => {
                    return Err(Status::unavailable(format!(
                        "the link to the leader at {address} closed before it answered: the call may or may not have run"
                    )))
                }
            }
        }
        Err(Status::unavailable(format!(
            "no forward stream to the leader at {address}"
        )))
    }

    /// The queue of the live link to `address`, started if there is none;
    /// `None` while the address gets unary calls.
    fn link(
        &self,
        channels: &PeerChannels,
        address: &str,
    ) -> Result<Option<mpsc::Sender<Queued>>, Status> {
        let mut links = self
            .links
            .lock()
            .map_err(|_| Status::internal("forward links poisoned"))?;
        match links.get(address) {
            Some(Link::Stream(q)) if !q.is_closed() => return Ok(Some(q.clone())),
            Some(Link::Unary { until }) if Instant::now() < *until => return Ok(None),
            _ => {}
        }
        // A new channel starts its connection worker on the current
        // runtime: make that the node's, which outlives any caller's.
        let channel = {
            let _node_runtime = self.runtime.enter();
            channels.get(address).map_err(Status::from)?
        };
        let (tx, rx) = mpsc::channel(LINK_QUEUE_CALLS);
        let (batches, outbound) = mpsc::channel(STREAM_BUFFER_BATCHES);
        let request = channels.peer_request(ReceiverStream::new(outbound));
        self.runtime.spawn(run_link(
            channel,
            request,
            batches,
            rx,
            address.to_string(),
            self.metrics.clone(),
        ));
        if links.len() >= MAX_LINKS {
            // Dropping a queue ends its link once its calls are answered.
            links.retain(|_, l| matches!(l, Link::Stream(q) if !q.is_closed()));
            if links.len() >= MAX_LINKS {
                links.clear();
            }
        }
        links.insert(address.to_string(), Link::Stream(tx.clone()));
        Ok(Some(tx))
    }

    fn forget(&self, address: &str) {
        if let Ok(mut links) = self.links.lock() {
            if matches!(links.get(address), Some(Link::Stream(q)) if q.is_closed()) {
                links.remove(address);
            }
        }
    }

    fn fall_back_to_unary(&self, address: &str) {
        if let Ok(mut links) = self.links.lock() {
            links.insert(
                address.to_string(),
                Link::Unary {
                    until: Instant::now() + UNARY_FALLBACK,
                },
            );
        }
    }
}

impl Forwarder {
    async fn unary(
        &self,
        channels: &PeerChannels,
        address: &str,
        call: pb::ForwardInvokeRequest,
    ) -> Reply {
        let channel = {
            let _node_runtime = self.runtime.enter();
            channels.get(address).map_err(Status::from)?
        };
        pb::peer_client::PeerClient::new(channel)
            .forward_invoke(channels.peer_request(call))
            .await
            .map(tonic::Response::into_inner)
    }
}

type Pending = Arc<Mutex<Option<HashMap<u64, oneshot::Sender<Answer>>>>>;

/// One stream's life: open it, then batch queued calls out and match
/// replies in, until the stream breaks or every caller is gone. Whatever is
/// pending when it ends is answered UNAVAILABLE (the call may or may not
/// have run on the leader, as with a unary call whose connection dropped;
/// a client retry with the same request id is answered once).
async fn run_link(
    channel: Channel,
    request: tonic::Request<ReceiverStream<pb::ForwardBatch>>,
    batches: mpsc::Sender<pb::ForwardBatch>,
    mut queue: mpsc::Receiver<Queued>,
    address: String,
    metrics: Arc<Metrics>,
) {
    let mut client = pb::peer_client::PeerClient::new(channel)
        .max_decoding_message_size(synapse_consensus::MAX_PEER_FRAME_BYTES)
        .max_encoding_message_size(synapse_consensus::MAX_PEER_FRAME_BYTES);
    let mut inbound = match client.forward_stream(request).await {
        Ok(response) => response.into_inner(),
        Err(status) => {
            debug!(%address, %status, "forward stream did not open");
            // After `close`, `recv` also returns calls whose senders held a
            // slot when it closed, then `None`: none is lost.
            queue.close();
            while let Some(q) = queue.recv().await {
                let answer = if status.code() == Code::Unimplemented {
                    Answer::NotServed(q.call)
                } else {
                    Answer::Replied(Err(status.clone()))
                };
                let _ = q.reply.send(answer);
            }
            return;
        }
    };
    metrics
        .forward_streams_opened
        .fetch_add(1, Ordering::Relaxed);
    let pending: Pending = Arc::new(Mutex::new(Some(HashMap::new())));
    let (stop, stopped) = watch::channel(false);
    let writer = tokio::spawn(write_batches(queue, batches, pending.clone(), stopped));
    let mut clean = false;
    let end = loop {
        match inbound.message().await {
            Ok(Some(batch)) => {
                let Ok(mut guard) = pending.lock() else {
                    break Status::internal("forward link poisoned");
                };
                let Some(waiting) = guard.as_mut() else {
                    break Status::internal("forward link closed");
                };
                for reply in batch.replies {
                    if let Some(tx) = waiting.remove(&reply.id) {
                        let _ = tx.send(Answer::Replied(reply_from_wire(reply.outcome)));
                    }
                }
            }
            Ok(None) => {
                clean = true;
                break Status::unavailable("the leader closed the forward stream");
            }
            Err(status) => break status,
        }
    };
    // The writer stops first, handing back every call it had not given to
    // the stream (so those are retried, not reported as possibly run);
    // only then is what was sent and not answered failed.
    let _ = stop.send(true);
    let _ = writer.await;
    let waiting = pending.lock().ok().and_then(|mut g| g.take());
    let unanswered = waiting.as_ref().map_or(0, HashMap::len);
    if !clean || unanswered > 0 {
        metrics
            .forward_stream_breaks
            .fetch_add(1, Ordering::Relaxed);
    }
    if let Some(waiting) = waiting {
        if !waiting.is_empty() {
            debug!(%address, status = %end, pending = waiting.len(), "forward stream ended");
        }
        let broke = Status::unavailable(format!(
            "the link to the leader at {address} broke before it answered ({}): the call may or may not have run",
            end.message()
        ));
        for (_, tx) in waiting {
            let _ = tx.send(Answer::Replied(Err(broke.clone())));
        }
    }
}

async fn write_batches(
    mut queue: mpsc::Receiver<Queued>,
    batches: mpsc::Sender<pb::ForwardBatch>,
    pending: Pending,
    mut stop: watch::Receiver<bool>,
) {
    let mut next_id: u64 = 0;
    loop {
        let first = tokio::select! {
            biased;
            _ = stop.changed() => break,
            q = queue.recv() => match q {
                Some(q) => q,
                // Every sender is gone: the link was dropped. Ending the
                // request stream lets the leader finish and close.
                None => return,
            },
        };
        let mut batch = pb::ForwardBatch::default();
        let mut bytes = 0;
        let mut item = Some(first);
        while let Some(q) = item.take() {
            bytes += q.size;
            let Ok(mut guard) = pending.lock() else {
                let _ = q.reply.send(Answer::NotSent(q.call));
                break;
            };
            match guard.as_mut() {
                Some(waiting) if waiting.len() < MAX_PENDING_CALLS => {
                    next_id += 1;
                    waiting.insert(next_id, q.reply);
                    batch.calls.push(pb::ForwardedInvoke {
                        id: next_id,
                        call: Some(q.call),
                    });
                }
                Some(_) => {
                    let _ =
                        q.reply
                            .send(Answer::Replied(Err(Status::resource_exhausted(format!(
                                "{MAX_PENDING_CALLS} forwarded calls already wait for the leader"
                            )))));
                }
                None => {
                    let _ = q.reply.send(Answer::NotSent(q.call));
                }
            }
            drop(guard);
            if batch.calls.len() < MAX_CALLS_PER_BATCH && bytes < MAX_BATCH_BYTES {
                item = queue.try_recv().ok();
            }
        }
        if batch.calls.is_empty() {
            continue;
        }
        let slot = tokio::select! {
            biased;
            _ = stop.changed() => None,
            slot = batches.reserve() => slot.ok(),
        };
        match slot {
            Some(slot) => slot.send(batch),
            None => {
                hand_back(batch, &pending);
                break;
            }
        }
    }
    queue.close();
    while let Some(q) = queue.recv().await {
        let _ = q.reply.send(Answer::NotSent(q.call));
    }
}

/// The calls of a batch that never reached the stream go back to their
/// callers as not sent.
fn hand_back(batch: pb::ForwardBatch, pending: &Pending) {
    let Ok(mut guard) = pending.lock() else {
        return;
    };
    let Some(waiting) = guard.as_mut() else {
        return;
    };
    for c in batch.calls {
        if let (Some(reply), Some(call)) = (waiting.remove(&c.id), c.call) {
            let _ = reply.send(Answer::NotSent(call));
        }
    }
}

/// A status as it crosses the stream: code, message and the leader hint
/// that `RuntimeError`'s conversion puts in the metadata.
pub(crate) fn error_to_wire(status: &Status) -> pb::ForwardedError {
    let header = |name: &str| {
        status
            .metadata()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    pb::ForwardedError {
        code: status.code() as i32,
        message: status.message().to_string(),
        leader_id: header(LEADER_HINT_HEADER).parse().unwrap_or(0),
        leader_address: header(LEADER_ADDR_HEADER),
    }
}

/// The inverse of [`error_to_wire`]: the status the unary call would have
/// produced, for `cluster::error_from_status`.
pub(crate) fn error_from_wire(e: pb::ForwardedError) -> Status {
    let mut status = Status::new(Code::from_i32(e.code), e.message);
    if e.leader_id != 0 {
        if let Ok(v) = e.leader_id.to_string().parse() {
            status.metadata_mut().insert(LEADER_HINT_HEADER, v);
        }
    }
    if !e.leader_address.is_empty() {
        if let Ok(v) = e.leader_address.parse() {
            status.metadata_mut().insert(LEADER_ADDR_HEADER, v);
        }
    }
    status
}

fn reply_from_wire(outcome: Option<pb::forwarded_reply::Outcome>) -> Reply {
    match outcome {
        Some(pb::forwarded_reply::Outcome::Response(r)) => Ok(r),
        Some(pb::forwarded_reply::Outcome::Error(e)) => Err(error_from_wire(e)),
        None => Err(Status::internal("the leader sent an empty forwarded reply")),
    }
}

/// Largest single reply the leader puts on a stream: the follower decodes
/// frames of at most `MAX_PEER_FRAME_BYTES`. A larger one is answered
/// OUT_OF_RANGE instead, what the unary call's decoder answered, so it fails
/// alone instead of breaking the stream shared with other calls.
pub const MAX_REPLY_BYTES: usize = synapse_consensus::MAX_PEER_FRAME_BYTES - 64 * 1024;

/// A reply as it goes on the stream: `MAX_REPLY_BYTES` at most.
pub(crate) fn bounded_reply(reply: pb::ForwardedReply) -> pb::ForwardedReply {
    let size = reply.encoded_len();
    if size <= MAX_REPLY_BYTES {
        return reply;
    }
    pb::ForwardedReply {
        id: reply.id,
        outcome: Some(pb::forwarded_reply::Outcome::Error(error_to_wire(
            &Status::out_of_range(format!(
                "the reply is {size} bytes, over the {MAX_REPLY_BYTES}-byte limit between members"
            )),
        ))),
    }
}

/// The leader's reply stream: whatever replies are ready, in batches of at
/// most `MAX_CALLS_PER_BATCH` replies and `MAX_BATCH_BYTES` (a batch holds
/// more only when it is one reply, itself at most `MAX_REPLY_BYTES`).
pub struct ReplyBatches {
    replies: mpsc::Receiver<pb::ForwardedReply>,
    /// A reply that did not fit the previous batch: first in the next.
    held: Option<pb::ForwardedReply>,
}

impl ReplyBatches {
    pub(crate) fn new(replies: mpsc::Receiver<pb::ForwardedReply>) -> Self {
        ReplyBatches {
            replies,
            held: None,
        }
    }
}

impl Stream for ReplyBatches {
    type Item = Result<pb::ForwardReplyBatch, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let first = match self.held.take() {
            Some(r) => r,
            None => match self.replies.poll_recv(cx) {
                Poll::Ready(Some(r)) => r,
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            },
        };
        let mut bytes = first.encoded_len();
        let mut batch = pb::ForwardReplyBatch {
            replies: vec![first],
        };
        while batch.replies.len() < MAX_CALLS_PER_BATCH {
            match self.replies.poll_recv(cx) {
                Poll::Ready(Some(r)) => {
                    let size = r.encoded_len();
                    if bytes + size > MAX_BATCH_BYTES {
                        self.held = Some(r);
                        break;
                    }
                    bytes += size;
                    batch.replies.push(r);
                }
                _ => break,
            }
        }
        Poll::Ready(Some(Ok(batch)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::error_from_status;
    use crate::error::RuntimeError;

    #[test]
    fn every_error_crosses_the_stream_as_the_unary_call_would_return_it() {
        let errors = || {
            [
                RuntimeError::Unauthenticated("no token".into()),
                RuntimeError::PermissionDenied("denied".into()),
                RuntimeError::NotFound("no such skill".into()),
                RuntimeError::InvalidArgument("bad".into()),
                RuntimeError::FailedPrecondition("version".into()),
                RuntimeError::Aborted("aborted".into()),
                RuntimeError::ResourceExhausted("full".into()),
                RuntimeError::DeadlineExceeded("late".into()),
                RuntimeError::DataLoss("damaged".into()),
                RuntimeError::Internal("bug".into()),
                RuntimeError::Unavailable {
                    reason: "not the leader".into(),
                    leader_id: Some(3),
                    leader_addr: Some("127.0.0.1:7003".into()),
                },
                RuntimeError::Unavailable {
                    reason: "no leader".into(),
                    leader_id: None,
                    leader_addr: None,
                },
            ]
        };
        for (a, b) in errors().into_iter().zip(errors()) {
            let direct = error_from_status(Status::from(a));
            let crossed = error_from_status(error_from_wire(error_to_wire(&Status::from(b))));
            assert_eq!(format!("{crossed:?}"), format!("{direct:?}"));
        }
    }

    #[test]
    fn an_empty_reply_is_an_internal_error_not_a_success() {
        let r = reply_from_wire(None);
        assert_eq!(r.unwrap_err().code(), Code::Internal);
    }

    fn reply_of(id: u64, bytes: usize) -> pb::ForwardedReply {
        pb::ForwardedReply {
            id,
            outcome: Some(pb::forwarded_reply::Outcome::Response(pb::InvokeResponse {
                reply: vec![b'x'; bytes],
                ..Default::default()
            })),
        }
    }

    /// Replies of every size come out in order, in batches that stay under
    /// the byte bound unless they hold a single reply, which itself stays
    /// under the frame limit the follower decodes with.
    #[tokio::test]
    async fn reply_batches_stay_under_the_frame_limit_whatever_the_reply_sizes() {
        use tokio_stream::StreamExt as _;
        let sizes = [
            10,
            300_000,
            900_000,
            2_500_000,
            2_500_000,
            10,
            MAX_REPLY_BYTES + 1,
            1_000_000,
            20,
        ];
        let (tx, rx) = mpsc::channel(sizes.len());
        for (i, n) in sizes.iter().enumerate() {
            tx.send(bounded_reply(reply_of(i as u64, *n)))
                .await
                .expect("queue");
        }
        drop(tx);
        let mut batches = ReplyBatches::new(rx);
        let mut ids = Vec::new();
        while let Some(batch) = batches.next().await {
            let batch = batch.expect("batch");
            let size = batch.encoded_len();
            assert!(
                size <= synapse_consensus::MAX_PEER_FRAME_BYTES,
                "a batch of {size} bytes would not decode"
            );
            assert!(
                batch.replies.len() == 1 || size <= MAX_BATCH_BYTES + 64,
                "{} replies in {size} bytes",
                batch.replies.len()
            );
            ids.extend(batch.replies.iter().map(|r| r.id));
            for r in &batch.replies {
                let over = r.id == 6;
                let is_error = matches!(r.outcome, Some(pb::forwarded_reply::Outcome::Error(_)));
                assert_eq!(is_error, over, "reply {} (over the limit: {over})", r.id);
            }
        }
        assert_eq!(ids, (0..sizes.len() as u64).collect::<Vec<_>>());
        let over = bounded_reply(reply_of(6, MAX_REPLY_BYTES + 1));
        match over.outcome {
            Some(pb::forwarded_reply::Outcome::Error(e)) => {
                assert_eq!(Code::from_i32(e.code), Code::OutOfRange)
            }
            other => panic!("an oversized reply went out as {other:?}"),
        }
    }

    /// How the fake leader answers a forward stream.
    #[derive(Clone, Copy, PartialEq)]
    enum Leader {
        /// Replies to each batch in reverse order, version = the call's
        /// `expected_version`, so a caller can tell its reply from others.
        Reversed,
        /// Takes the calls, never answers, then drops the stream.
        HangsUpWithoutAnswering,
        /// Predates ForwardStream: UNIMPLEMENTED; serves unary calls.
        UnaryOnly,
    }

    #[derive(Clone)]
    struct FakeLeader {
        mode: Leader,
        unary_calls: Arc<std::sync::atomic::AtomicU64>,
        streams: Arc<std::sync::atomic::AtomicU64>,
    }

    fn echo(call: &pb::ForwardInvokeRequest) -> pb::InvokeResponse {
        pb::InvokeResponse {
            version: call
                .request
                .as_ref()
                .and_then(|r| r.expected_version)
                .unwrap_or(0),
            ..Default::default()
        }
    }

    type Replies = Pin<Box<dyn Stream<Item = Result<pb::ForwardReplyBatch, Status>> + Send>>;

    #[tonic::async_trait]
    impl pb::peer_server::Peer for FakeLeader {
        async fn raft(
            &self,
            _: tonic::Request<tonic::Streaming<pb::RaftBatch>>,
        ) -> Result<tonic::Response<pb::RaftAck>, Status> {
            Err(Status::unimplemented("fake"))
        }
        async fn forward_invoke(
            &self,
            request: tonic::Request<pb::ForwardInvokeRequest>,
        ) -> Result<tonic::Response<pb::InvokeResponse>, Status> {
            self.unary_calls
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(tonic::Response::new(echo(request.get_ref())))
        }
        type ForwardStreamStream = Replies;
        async fn forward_stream(
            &self,
            request: tonic::Request<tonic::Streaming<pb::ForwardBatch>>,
        ) -> Result<tonic::Response<Replies>, Status> {
            if self.mode == Leader::UnaryOnly {
                return Err(Status::unimplemented("unknown method"));
            }
            self.streams
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mode = self.mode;
            let mut inbound = request.into_inner();
            let (tx, rx) = mpsc::channel(16);
            tokio::spawn(async move {
                while let Ok(Some(batch)) = inbound.message().await {
                    if mode == Leader::HangsUpWithoutAnswering {
                        let _ = tx.send(Err(Status::unavailable("leader going away"))).await;
                        return;
                    }
                    let replies = batch
                        .calls
                        .iter()
                        .rev()
                        .map(|c| pb::ForwardedReply {
                            id: c.id,
                            outcome: c
                                .call
                                .as_ref()
                                .map(|call| pb::forwarded_reply::Outcome::Response(echo(call))),
                        })
                        .collect();
                    if tx
                        .send(Ok(pb::ForwardReplyBatch { replies }))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
            Ok(tonic::Response::new(Box::pin(ReceiverStream::new(rx))))
        }
        async fn clock_sample(
            &self,
            _: tonic::Request<pb::ClockSampleRequest>,
        ) -> Result<tonic::Response<pb::ClockSampleResponse>, Status> {
            Err(Status::unimplemented("fake"))
        }
        async fn fetch_checkpoint(
            &self,
            _: tonic::Request<pb::FetchCheckpointRequest>,
        ) -> Result<tonic::Response<pb::FetchCheckpointResponse>, Status> {
            Err(Status::unimplemented("fake"))
        }
        async fn fetch_log_entries(
            &self,
            _: tonic::Request<pb::FetchLogEntriesRequest>,
        ) -> Result<tonic::Response<pb::FetchLogEntriesResponse>, Status> {
            Err(Status::unimplemented("fake"))
        }
        async fn probe(
            &self,
            _: tonic::Request<pb::ProbeRequest>,
        ) -> Result<tonic::Response<pb::ProbeResponse>, Status> {
            Err(Status::unimplemented("fake"))
        }
    }

    /// A fake leader on a real loopback socket; returns its address.
    async fn start(leader: FakeLeader) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let address = listener.local_addr().expect("local address").to_string();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(pb::peer_server::PeerServer::new(leader))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        address
    }

    fn fake(mode: Leader) -> FakeLeader {
        FakeLeader {
            mode,
            unary_calls: Default::default(),
            streams: Default::default(),
        }
    }

    fn call_numbered(n: u64) -> pb::ForwardInvokeRequest {
        pb::ForwardInvokeRequest {
            request: Some(pb::InvokeRequest {
                skill: "counter".into(),
                instance: format!("c{n}"),
                method: "incr".into(),
                expected_version: Some(n),
                ..Default::default()
            }),
            token: "t".into(),
        }
    }

    fn channels() -> PeerChannels {
        PeerChannels::new(None, Arc::new(|| None))
    }

    /// Many concurrent callers share one stream, their calls travel in
    /// batches, the fake leader answers each batch in reverse, and every
    /// caller still gets its own reply.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_calls_share_one_stream_and_each_gets_its_own_reply() {
        let leader = fake(Leader::Reversed);
        let address = start(leader.clone()).await;
        let metrics: Arc<Metrics> = Default::default();
        let forwarder = Arc::new(Forwarder::new(
            tokio::runtime::Handle::current(),
            metrics.clone(),
        ));
        let channels = Arc::new(channels());
        let calls: Vec<_> = (1..=500u64)
            .map(|n| {
                let (f, c, a) = (forwarder.clone(), channels.clone(), address.clone());
                tokio::spawn(async move { (n, f.call(&c, &a, call_numbered(n)).await) })
            })
            .collect();
        for call in calls {
            let (n, reply) = call.await.expect("caller task");
            assert_eq!(
                reply.expect("reply").version,
                n,
                "call {n} got another's reply"
            );
        }
        assert_eq!(leader.streams.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(
            leader.unary_calls.load(std::sync::atomic::Ordering::SeqCst),
            0
        );
    }

    /// A stream that breaks fails its pending calls as UNAVAILABLE (a
    /// retryable answer, never a hang), and the next call opens a new one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_broken_stream_fails_its_calls_unavailable_and_the_next_call_reopens() {
        let leader = fake(Leader::HangsUpWithoutAnswering);
        let address = start(leader.clone()).await;
        let metrics: Arc<Metrics> = Default::default();
        let forwarder = Forwarder::new(tokio::runtime::Handle::current(), metrics.clone());
        let channels = channels();
        for n in 1..=3 {
            let r = tokio::time::timeout(
                Duration::from_secs(10),
                forwarder.call(&channels, &address, call_numbered(n)),
            )
            .await
            .expect("a broken stream must not leave the caller hanging");
            assert_eq!(r.expect_err("no reply was sent").code(), Code::Unavailable);
        }
        assert_eq!(leader.streams.load(std::sync::atomic::Ordering::SeqCst), 3);
        assert_eq!(metrics.forward_streams_opened.load(Ordering::Relaxed), 3);
        assert_eq!(metrics.forward_stream_breaks.load(Ordering::Relaxed), 3);
    }

    /// A leader that predates ForwardStream gets the same call as a unary
    /// ForwardInvoke, and later calls go unary without trying the stream.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_leader_without_the_stream_gets_unary_calls() {
        let leader = fake(Leader::UnaryOnly);
        let address = start(leader.clone()).await;
        let forwarder = Forwarder::new(tokio::runtime::Handle::current(), Default::default());
        let channels = channels();
        for n in 1..=3 {
            let r = forwarder.call(&channels, &address, call_numbered(n)).await;
            assert_eq!(r.expect("unary reply").version, n);
        }
        assert_eq!(
            leader.unary_calls.load(std::sync::atomic::Ordering::SeqCst),
            3
        );
    }
}
