//! The tonic services: thin translations between `synapse.v1` messages and
//! [`Core`]. Status codes come from `RuntimeError`'s one conversion.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use synapse_proto::v1 as pb;
use synapse_storage::{Checkpoint, Timestamp};
use tokio::sync::watch;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::error::RuntimeError;
use crate::node::{Core, InvokePermit, InvokeRequest};

/// Metadata key of the capability token: `authorization: Bearer <token>`.
pub const AUTHORIZATION: &str = "authorization";

/// Largest gRPC message the server decodes: well above the payload limit so
/// that an oversized payload gets our clear INVALID_ARGUMENT rather than
/// tonic's OUT_OF_RANGE, yet bounded (16 MiB, or 4× the payload limit).
fn max_decoding_bytes(core: &Core) -> usize {
    core.config()
        .max_payload_bytes
        .saturating_mul(4)
        .max(16 * 1024 * 1024)
}

/// History responses hold at most MAX_HISTORY states of at most
/// `max_state_bytes` each; the encoder limit must allow that.
const MAX_ENCODING_BYTES: usize = 256 * 1024 * 1024;

/// Requests in flight per client connection (HTTP/2 streams served at once).
const MAX_CONCURRENT_PER_CONNECTION: usize = 1024;

/// HTTP/2 PING interval on accepted connections, and how long the answer
/// may take before the connection is closed. A caller that vanished without
/// a FIN or RST (a crash behind a partition, a black-holed route) otherwise
/// keeps its streams open, and the slots they hold ([`MAX_PEER_RAFT_STREAMS`],
/// [`MAX_FORWARD_STREAMS`], watchers, partial messages), until TCP gives up,
/// which can take many minutes. Peers' own links ping every second
/// (`synapse_consensus::peer_endpoint`); this side only has to release dead
/// ones, so it pings far less often.
const SERVER_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const SERVER_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) fn token<T>(req: &Request<T>) -> Result<Option<String>, Status> {
    match req.metadata().get(AUTHORIZATION) {
        None => Ok(None),
        Some(v) => {
            // A non-ASCII header still goes to the guard (lossily decoded),
            // which rejects it as malformed (UNAUTHENTICATED) and audits the
            // denial like any other bad token; refusing it here would leave
            // no audit record.
            let s = String::from_utf8_lossy(v.as_bytes());
            let t = s.strip_prefix("Bearer ").unwrap_or(&s).trim();
            Ok((!t.is_empty()).then(|| t.to_string()))
        }
    }
}

pub fn timestamp_to_pb(ts: &Timestamp) -> pb::Timestamp {
    pb::Timestamp {
        physical_micros: ts.physical_micros,
        logical: ts.logical,
        node_id: ts.node_id,
    }
}

pub fn checkpoint_to_pb(cp: &Checkpoint) -> pb::Checkpoint {
    pb::Checkpoint {
        skill: cp.skill.clone(),
        instance: cp.instance.clone(),
        version: cp.version,
        parent_hash: cp.parent_hash.to_vec(),
        state: cp.state.clone(),
        timestamp: Some(timestamp_to_pb(&cp.timestamp)),
        request_id: cp.request_id.clone(),
        hash: cp.hash.to_vec(),
    }
}

fn invoke_response(r: crate::actor::InvokeResult) -> Result<pb::InvokeResponse, Status> {
    let reply = serde_json::to_vec(&r.reply)
        .map_err(|e| Status::internal(format!("reply does not encode: {e}")))?;
    Ok(pb::InvokeResponse {
        reply,
        version: r.version,
        timestamp: Some(timestamp_to_pb(&r.timestamp)),
        hash: r.hash.to_vec(),
        deduplicated: r.deduplicated,
        request_id: r.request_id,
    })
}

/// A wire Invoke as the core takes it (payload decoded and bounded).
fn invoke_request(
    req: pb::InvokeRequest,
    max_payload_bytes: usize,
) -> Result<InvokeRequest, RuntimeError> {
    Ok(InvokeRequest {
        payload: decode_payload(&req.payload, max_payload_bytes)?,
        skill: req.skill,
        instance: req.instance,
        method: req.method,
        request_id: req.request_id,
        expected_version: req.expected_version,
    })
}

/// An Invoke payload: bounded in size, JSON, empty meaning `null`.
pub(crate) fn decode_payload(
    payload: &[u8],
    max_payload_bytes: usize,
) -> Result<serde_json::Value, RuntimeError> {
    if payload.len() > max_payload_bytes {
        return Err(RuntimeError::InvalidArgument(format!(
            "payload is {} bytes, over the {max_payload_bytes}-byte limit",
            payload.len(),
        )));
    }
    if payload.is_empty() {
        return Ok(serde_json::Value::Null);
    }
    serde_json::from_slice(payload)
        .map_err(|e| RuntimeError::InvalidArgument(format!("payload is not valid JSON: {e}")))
}

/// Proof, carried in the request extensions from [`InvokeFrontDoor`] to the
/// Invoke handler, that the call holds one of the node's in-flight slots.
/// Extensions must be `Clone`, so the permit sits in a shared cell and the
/// handler takes it out; the slot is released when the handler's call ends
/// (or, if the handler never runs, when the request is dropped).
#[derive(Clone)]
struct AdmittedInvoke(Arc<std::sync::Mutex<Option<InvokePermit>>>);

impl AdmittedInvoke {
    fn into_permit(self) -> Option<InvokePermit> {
        self.0.lock().ok().and_then(|mut p| p.take())
    }
}

/// Load shedding at the front door. Every gRPC request passes here before
/// tonic reads its body; an Invoke takes its in-flight slot from the path
/// alone, so a call refused under overload costs one atomic add and a
/// trailers-only RESOURCE_EXHAUSTED response: no protobuf or JSON decoding
/// of its payload, no capability check (and no audit record), no actor.
/// An admitted call still goes through every check in `Core::invoke_admitted`.
#[derive(Clone)]
pub(crate) struct InvokeFrontDoor<S> {
    inner: S,
    core: Arc<Core>,
}

impl<S> InvokeFrontDoor<S> {
    pub(crate) fn new(inner: S, core: Arc<Core>) -> Self {
        InvokeFrontDoor { inner, core }
    }
}

/// Whether a request path is `Skills/Invoke` (`/synapse.v1.Skills/Invoke`).
fn is_invoke_path(path: &str) -> bool {
    use tonic::server::NamedService;
    path.strip_prefix('/')
        .and_then(|p| p.strip_prefix(<pb::skills_server::SkillsServer<Api> as NamedService>::NAME))
        == Some("/Invoke")
}

impl<S, ReqBody, ResBody> tonic::codegen::Service<tonic::codegen::http::Request<ReqBody>>
    for InvokeFrontDoor<S>
where
    S: tonic::codegen::Service<
        tonic::codegen::http::Request<ReqBody>,
        Response = tonic::codegen::http::Response<ResBody>,
    >,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: tonic::codegen::http::Request<ReqBody>) -> Self::Future {
        if is_invoke_path(request.uri().path()) {
            match self.core.try_admit_invoke() {
                Ok(permit) => {
                    request.extensions_mut().insert(AdmittedInvoke(Arc::new(
                        std::sync::Mutex::new(Some(permit)),
                    )));
                }
                Err(refused) => {
                    let response = Status::from(refused).into_http::<ResBody>();
                    return Box::pin(std::future::ready(Ok(response)));
                }
            }
        }
        Box::pin(self.inner.call(request))
    }
}

/// Implements every client service over one shared [`Core`].
#[derive(Clone)]
pub struct Api {
    core: Arc<Core>,
    /// One slot per open `Peer/ForwardStream` (see [`MAX_FORWARD_STREAMS`]).
    forward_streams: Arc<tokio::sync::Semaphore>,
}

/// Inbound `Peer/Raft` streams served at once on a node (excess ones get
/// RESOURCE_EXHAUSTED). An honest member keeps one open to each other member
/// (`GrpcTransport` has one link per peer), plus for a moment a second one
/// while a broken link is replaced and this side has not yet seen the old
/// stream end (the HTTP/2 keepalive in [`serve`] ends a dead connection's
/// streams). 64 admits a 32-member cluster with every link being replaced
/// at once, far beyond the 3–7 voters a Raft cluster runs with. It matters
/// most before the root key is installed, when `cluster::authorize_peer`
/// admits any caller. With it, inbound Raft traffic holds at most
/// `synapse_consensus::MAX_REASSEMBLY_TOTAL_BYTES` (1 GiB, shared by all
/// streams) in partial messages, plus per stream the frame being decoded
/// (at most `MAX_PEER_FRAME_BYTES`, 4 MiB, in tonic's buffer and again
/// decoded): about 1 GiB + 64 × 8 MiB = 1.5 GiB in the worst case.
pub const MAX_PEER_RAFT_STREAMS: usize = 64;

/// Forward streams served at once. An honest member keeps one per leader
/// it has forwarded to; this bounds what a peer (even one holding a valid
/// credential) can make the node hold: streams times
/// `forward::MAX_PENDING_CALLS` calls.
pub const MAX_FORWARD_STREAMS: usize = 64;

impl Api {
    pub fn new(core: Arc<Core>) -> Self {
        Api {
            core,
            forward_streams: Arc::new(tokio::sync::Semaphore::new(MAX_FORWARD_STREAMS)),
        }
    }

    /// Runs the calls of one forward stream, each in its own task, at most
    /// `forward::MAX_PENDING_CALLS` at once (a full set holds the stream
    /// back through HTTP/2 flow control). When the follower ends the
    /// stream, the calls still running finish and are answered; when the
    /// stream breaks, they are dropped, as a unary call's handler is when
    /// its caller goes away (an Invoke may be dropped at any await).
    async fn serve_forwarded(
        self,
        mut inbound: tonic::Streaming<pb::ForwardBatch>,
        replies: tokio::sync::mpsc::Sender<pb::ForwardedReply>,
        _stream_slot: tokio::sync::OwnedSemaphorePermit,
    ) {
        let call_slots = Arc::new(tokio::sync::Semaphore::new(
            crate::forward::MAX_PENDING_CALLS,
        ));
        let mut calls = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                message = inbound.message() => match message {
                    Ok(Some(batch)) => {
                        for call in batch.calls {
                            let Ok(slot) = call_slots.clone().acquire_owned().await else {
                                return;
                            };
                            let api = self.clone();
                            let replies = replies.clone();
                            calls.spawn(async move {
                                let reply = api.answer_forwarded(call).await;
                                let _ = replies.send(reply).await;
                                drop(slot);
                            });
                        }
                    }
                    Ok(None) => {
                        while calls.join_next().await.is_some() {}
                        return;
                    }
                    Err(_) => return,
                },
                Some(_) = calls.join_next(), if !calls.is_empty() => {}
            }
        }
    }

    async fn answer_forwarded(&self, call: pb::ForwardedInvoke) -> pb::ForwardedReply {
        use pb::forwarded_reply::Outcome;
        let outcome = match call.call {
            Some(c) => match self.run_forwarded(c).await {
                Ok(r) => Outcome::Response(r),
                Err(s) => Outcome::Error(crate::forward::error_to_wire(&s)),
            },
            None => Outcome::Error(crate::forward::error_to_wire(&Status::invalid_argument(
                "forwarded call is empty",
            ))),
        };
        crate::forward::bounded_reply(pb::ForwardedReply {
            id: call.id,
            outcome: Some(outcome),
        })
    }

    /// An Invoke forwarded by a follower (unary or on a stream), run here
    /// or nowhere.
    async fn run_forwarded(
        &self,
        fwd: pb::ForwardInvokeRequest,
    ) -> Result<pb::InvokeResponse, Status> {
        let req = fwd
            .request
            .ok_or_else(|| Status::invalid_argument("forwarded request is empty"))?;
        // The same limit as a direct Invoke: the peer frame bound is far
        // larger than the payload limit.
        let req = invoke_request(req, self.core.config().max_payload_bytes)?;
        let token = (!fwd.token.is_empty()).then_some(fwd.token);
        let result = self.core.invoke_forwarded(token.as_deref(), req).await?;
        invoke_response(result)
    }

    /// Every Peer RPC starts here: see `cluster::authorize_peer`.
    fn authorize_peer<T>(&self, request: &Request<T>, rpc: &str) -> Result<(), Status> {
        crate::cluster::authorize_peer(
            &self.core.keys,
            self.core.config().tls_enabled(),
            request,
            rpc,
        )
        .map_err(|e| {
            let remote = request
                .remote_addr()
                .map_or_else(|| "unknown".to_string(), |a| a.to_string());
            self.core.audit_peer_denial(rpc, &remote, &e);
            Status::from(e)
        })
    }
}

#[tonic::async_trait]
impl pb::skills_server::Skills for Api {
    async fn invoke(
        &self,
        mut request: Request<pb::InvokeRequest>,
    ) -> Result<Response<pb::InvokeResponse>, Status> {
        // The front door normally took the slot already; a call that
        // bypassed it (an `Api` served without `InvokeFrontDoor`) takes it
        // here, still before any decoding.
        let permit = match request
            .extensions_mut()
            .remove::<AdmittedInvoke>()
            .and_then(AdmittedInvoke::into_permit)
        {
            Some(permit) => permit,
            None => self.core.try_admit_invoke()?,
        };
        let token = token(&request)?;
        let req = request.into_inner();
        let req = invoke_request(req, self.core.config().max_payload_bytes)?;
        let result = self
            .core
            .invoke_admitted(permit, token.as_deref(), req)
            .await?;
        Ok(Response::new(invoke_response(result)?))
    }

    async fn get_state(
        &self,
        request: Request<pb::GetStateRequest>,
    ) -> Result<Response<pb::GetStateResponse>, Status> {
        let token = token(&request)?;
        let req = request.into_inner();
        let cp = match (req.version, req.at) {
            (0, Some(at)) => {
                let at = Timestamp {
                    physical_micros: at.physical_micros,
                    logical: at.logical,
                    node_id: at.node_id,
                };
                self.core
                    .get_state_at(token.as_deref(), &req.skill, &req.instance, at)
                    .await?
            }
            (version, _) => {
                self.core
                    .get_state(token.as_deref(), &req.skill, &req.instance, version)
                    .await?
            }
        };
        Ok(Response::new(pb::GetStateResponse {
            checkpoint: Some(checkpoint_to_pb(&cp)),
        }))
    }

    async fn history(
        &self,
        request: Request<pb::HistoryRequest>,
    ) -> Result<Response<pb::HistoryResponse>, Status> {
        let token = token(&request)?;
        let req = request.into_inner();
        let list = self
            .core
            .history(
                token.as_deref(),
                &req.skill,
                &req.instance,
                req.before_version,
                req.limit,
            )
            .await?;
        Ok(Response::new(pb::HistoryResponse {
            checkpoints: list.iter().map(checkpoint_to_pb).collect(),
        }))
    }

    async fn rollback(
        &self,
        request: Request<pb::RollbackRequest>,
    ) -> Result<Response<pb::InvokeResponse>, Status> {
        let token = token(&request)?;
        let req = request.into_inner();
        let r = self
            .core
            .rollback(
                token.as_deref(),
                &req.skill,
                &req.instance,
                req.to_version,
                &req.request_id,
            )
            .await?;
        Ok(Response::new(invoke_response(r)?))
    }

    async fn verify(
        &self,
        request: Request<pb::VerifyRequest>,
    ) -> Result<Response<pb::VerifyResponse>, Status> {
        let token = token(&request)?;
        let req = request.into_inner();
        let r = self
            .core
            .verify(token.as_deref(), &req.skill, &req.instance)
            .await?;
        Ok(Response::new(pb::VerifyResponse {
            ok: r.ok,
            versions_checked: r.versions_checked,
            oldest_version: r.oldest_version,
            latest_version: r.latest_version,
            head_hash: r.head_hash.to_vec(),
            problem: r.problem.unwrap_or_default(),
        }))
    }

    type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::Checkpoint, Status>> + Send + 'static>>;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let token = token(&request)?;
        let req = request.into_inner();
        let mut sub = self
            .core
            .watch(token.as_deref(), &req.skill, &req.instance)?;
        let stream = async_stream(move |tx| async move {
            loop {
                // Also wake when the client goes away, so an idle stream
                // releases its watcher slot at once, not at the next change.
                let next = tokio::select! {
                    next = sub.next() => next,
                    _ = tx.closed() => break,
                };
                let item = next.map(|cp| checkpoint_to_pb(&cp)).map_err(Status::from);
                let stop = item.is_err();
                if tx.send(item).await.is_err() || stop {
                    break;
                }
            }
        });
        Ok(Response::new(stream))
    }
}

/// A stream fed by a task through a small bounded channel: the task stops
/// when the client goes away (send fails).
fn async_stream<F, Fut>(
    f: F,
) -> Pin<Box<dyn Stream<Item = Result<pb::Checkpoint, Status>> + Send + 'static>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<pb::Checkpoint, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    // Small: the broadcast buffer behind it is the real bound.
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(f(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

#[tonic::async_trait]
impl pb::cluster_server::Cluster for Api {
    async fn status(
        &self,
        request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let token = token(&request)?;
        let s = self.core.status(token.as_deref())?;
        let clock = self.core.clock_status();
        let mut addresses: std::collections::HashMap<u64, String> =
            self.core.peer_addresses().into_iter().collect();
        if let Some(me) = self.core.config().advertise_address() {
            addresses.insert(self.core.node_id(), me);
        }
        Ok(Response::new(pb::StatusResponse {
            node_id: self.core.node_id(),
            role: s.raft.role.as_str().into(),
            leader_id: s.raft.leader_id,
            term: s.raft.term,
            commit_index: s.raft.commit_index,
            applied_index: s.applied_index,
            voters: s.raft.voters.clone(),
            learners: s.raft.learners.clone(),
            peers: peer_statuses(&s, &clock, &addresses),
            state_hash: s.state_hash.to_vec(),
            instances: s.instances,
            version: env!("CARGO_PKG_VERSION").into(),
            clock_offset_micros: clock.offset_micros,
            clock_uncertainty_micros: clock.uncertainty_micros,
            clock_healthy: clock.healthy,
            clock_problem: clock.problem.clone(),
            removed: self.core.removed_members()?,
        }))
    }

    type BackupStream =
        Pin<Box<dyn Stream<Item = Result<pb::BackupChunk, Status>> + Send + 'static>>;

    async fn backup(
        &self,
        request: Request<pb::BackupRequest>,
    ) -> Result<Response<Self::BackupStream>, Status> {
        /// Chunk size: well under the default 4 MiB gRPC frame limit.
        const BACKUP_CHUNK: usize = 1024 * 1024;
        let token = token(&request)?;
        let (applied, data) = self.core.backup(token.as_deref()).await?;
        let total = data.len() as u64;
        let chunks: Vec<Result<pb::BackupChunk, Status>> = data
            .chunks(BACKUP_CHUNK)
            .enumerate()
            .map(|(i, c)| {
                Ok(pb::BackupChunk {
                    data: c.to_vec(),
                    applied_index: if i == 0 { applied } else { 0 },
                    total_bytes: if i == 0 { total } else { 0 },
                })
            })
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks))))
    }

    async fn add_member(
        &self,
        request: Request<pb::AddMemberRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        let token = token(&request)?;
        let r = request.into_inner();
        let request = crate::node::AddMember {
            id: r.id,
            address: &r.address,
            as_voter: r.as_voter,
            fresh: r.fresh,
            new_id_if_removed: r.new_id_if_removed,
        };
        Ok(membership(
            self.core.add_member(token.as_deref(), request).await?,
        ))
    }

    async fn promote_member(
        &self,
        request: Request<pb::MemberRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        let token = token(&request)?;
        let id = request.into_inner().id;
        Ok(membership(
            self.core.promote_member(token.as_deref(), id).await?,
        ))
    }

    async fn remove_member(
        &self,
        request: Request<pb::MemberRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        let token = token(&request)?;
        let id = request.into_inner().id;
        Ok(membership(
            self.core.remove_member(token.as_deref(), id).await?,
        ))
    }

    async fn transfer_leader(
        &self,
        request: Request<pb::MemberRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        let token = token(&request)?;
        let id = request.into_inner().id;
        Ok(membership(self.core.transfer_leader(token.as_deref(), id)?))
    }
}

/// Every member this node knows of: voters, learners, linked peers and
/// peers with clock samples. Match index and lag are known on the leader.
fn peer_statuses(
    s: &crate::node::NodeStatus,
    clock: &crate::clock_service::ClockStatus,
    addresses: &std::collections::HashMap<u64, String>,
) -> Vec<pb::PeerStatus> {
    let mut ids: std::collections::BTreeSet<u64> = s
        .raft
        .voters
        .iter()
        .chain(&s.raft.learners)
        .copied()
        .collect();
    ids.extend(addresses.keys().copied());
    ids.extend(clock.peers.iter().map(|p| p.peer));
    let last = s.raft.last_index;
    ids.into_iter()
        .map(|id| {
            let matched = s
                .raft
                .progress
                .iter()
                .find(|(p, _)| *p == id)
                .map(|(_, m)| *m)
                .unwrap_or(0);
            let sample = clock.peers.iter().find(|p| p.peer == id);
            pb::PeerStatus {
                id,
                address: addresses.get(&id).cloned().unwrap_or_default(),
                match_index: matched,
                lag: if s.raft.progress.is_empty() {
                    0
                } else {
                    last.saturating_sub(matched)
                },
                clock_offset_micros: sample.map(|p| p.offset_micros).unwrap_or(0),
                clock_uncertainty_micros: sample.map(|p| p.uncertainty_micros).unwrap_or(0),
                clock_sample_age_ms: sample
                    .map(|p| u64::try_from(p.age.as_millis()).unwrap_or(u64::MAX))
                    .unwrap_or(0),
            }
        })
        .collect()
}

fn membership(m: crate::node::Membership) -> Response<pb::MembershipResponse> {
    Response::new(pb::MembershipResponse {
        voters: m.voters,
        learners: m.learners,
        id: m.id,
    })
}

#[tonic::async_trait]
impl pb::peer_server::Peer for Api {
    async fn raft(
        &self,
        request: Request<tonic::Streaming<pb::RaftBatch>>,
    ) -> Result<Response<pb::RaftAck>, Status> {
        self.authorize_peer(&request, "raft")?;
        // Held until this call returns: the stream ended, broke or failed.
        let _slot = self
            .core
            .raft_streams
            .clone()
            .try_acquire_owned()
            .map_err(|_| {
                self.core
                    .metrics
                    .peer_raft_streams_refused
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                RuntimeError::ResourceExhausted(format!(
                    "{MAX_PEER_RAFT_STREAMS} Peer/Raft streams already open on this node; \
                     retry later"
                ))
            })?;
        let mut stream = request.into_inner();
        let mut decoder = synapse_consensus::FrameDecoder::new(self.core.reassembly.clone());
        let me = self.core.node_id();
        while let Some(frame) = stream.message().await? {
            if let Some(t) = &self.core.transport {
                t.learn_peer(frame.from, &frame.from_address);
            }
            if let Some(ts) = &frame.hlc {
                self.core.observe_peer_clock(Timestamp {
                    physical_micros: ts.physical_micros,
                    logical: ts.logical,
                    node_id: ts.node_id,
                });
            }
            let messages = decoder.decode(frame).map_err(RuntimeError::from)?;
            for msg in messages {
                if msg.to != me {
                    tracing::debug!(
                        to = msg.to,
                        "dropping raft message addressed to another node"
                    );
                    continue;
                }
                if !snapshot_verifies(&msg) {
                    continue;
                }
                // A full queue drops the message; raft retransmits.
                let _ = self.core.raft.step(msg);
            }
        }
        Ok(Response::new(pb::RaftAck {}))
    }

    async fn clock_sample(
        &self,
        request: Request<pb::ClockSampleRequest>,
    ) -> Result<Response<pb::ClockSampleResponse>, Status> {
        self.authorize_peer(&request, "clock_sample")?;
        let t2 = self.core.hlc().raw_physical_micros();
        drop(request);
        let t3 = self.core.hlc().raw_physical_micros();
        Ok(Response::new(pb::ClockSampleResponse {
            node_id: self.core.node_id(),
            t2_micros: t2,
            t3_micros: t3,
        }))
    }

    /// A committed checkpoint, verified here before it is sent; the caller
    /// verifies it again against its own anchor (`crate::repair`).
    async fn fetch_checkpoint(
        &self,
        request: Request<pb::FetchCheckpointRequest>,
    ) -> Result<Response<pb::FetchCheckpointResponse>, Status> {
        self.authorize_peer(&request, "fetch_checkpoint")?;
        let req = request.into_inner();
        let found = self
            .core
            .store()
            .encoded_checkpoint(&req.skill, &req.instance, req.version)
            .inspect_err(|e| {
                if e.is_corrupt() {
                    // Our copy is damaged too: repair it as well.
                    self.core.report_corrupt(&req.skill, &req.instance);
                }
            })
            .map_err(crate::RuntimeError::from)?;
        let checkpoint = found.ok_or_else(|| {
            crate::RuntimeError::NotFound(format!(
                "{}/{} v{} is not retained here",
                req.skill, req.instance, req.version
            ))
        })?;
        Ok(Response::new(pb::FetchCheckpointResponse { checkpoint }))
    }

    /// Does a cluster exist here, and what is the asker's id in it? For a
    /// node with a blank log about to bootstrap (`crate::identity`).
    async fn probe(
        &self,
        request: Request<pb::ProbeRequest>,
    ) -> Result<Response<pb::ProbeResponse>, Status> {
        crate::cluster::authorize_probe(self.core.config().tls_enabled(), &request)?;
        let id = request.into_inner().id;
        Ok(Response::new(self.core.probe_answer(id)?))
    }

    /// Committed Raft log records, verified here before they are sent; the
    /// caller verifies them again (`crate::log_repair`).
    async fn fetch_log_entries(
        &self,
        request: Request<pb::FetchLogEntriesRequest>,
    ) -> Result<Response<pb::FetchLogEntriesResponse>, Status> {
        self.authorize_peer(&request, "fetch_log_entries")?;
        let req = request.into_inner();
        let response = crate::log_repair::serve(self.core.store(), req.from, req.to).await?;
        Ok(Response::new(response))
    }

    async fn forward_invoke(
        &self,
        request: Request<pb::ForwardInvokeRequest>,
    ) -> Result<Response<pb::InvokeResponse>, Status> {
        self.authorize_peer(&request, "forward_invoke")?;
        Ok(Response::new(
            self.run_forwarded(request.into_inner()).await?,
        ))
    }

    type ForwardStreamStream = crate::forward::ReplyBatches;

    async fn forward_stream(
        &self,
        request: Request<tonic::Streaming<pb::ForwardBatch>>,
    ) -> Result<Response<Self::ForwardStreamStream>, Status> {
        self.authorize_peer(&request, "forward_stream")?;
        let stream_slot = self
            .forward_streams
            .clone()
            .try_acquire_owned()
            .map_err(|_| {
                Status::resource_exhausted(format!(
                    "{MAX_FORWARD_STREAMS} forward streams already open on this node"
                ))
            })?;
        let inbound = request.into_inner();
        let (replies, outbound) = tokio::sync::mpsc::channel(crate::forward::MAX_PENDING_CALLS);
        tokio::spawn(self.clone().serve_forwarded(inbound, replies, stream_slot));
        Ok(Response::new(crate::forward::ReplyBatches::new(outbound)))
    }
}

/// Revocation and the audit query (see `capabilities.rs`).
#[tonic::async_trait]
impl pb::capabilities_server::Capabilities for Api {
    async fn revoke(
        &self,
        request: Request<pb::RevokeRequest>,
    ) -> Result<Response<pb::RevokeResponse>, Status> {
        let token = token(&request)?;
        let r = request.into_inner();
        let done = self
            .core
            .revoke(token.as_deref(), &r.token, &r.reason)
            .await?;
        Ok(Response::new(pb::RevokeResponse {
            revocation_ids: done.ids.iter().map(hex::encode).collect(),
            index: done.index,
        }))
    }

    async fn audit(
        &self,
        request: Request<pb::AuditRequest>,
    ) -> Result<Response<pb::AuditResponse>, Status> {
        let token = token(&request)?;
        let r = request.into_inner();
        let filter = synapse_storage::AuditFilter {
            from_micros: r.from_micros,
            to_micros: r.to_micros,
            principal: (!r.principal.is_empty()).then_some(r.principal),
            allowed: crate::capabilities::parse_outcome(&r.outcome)?,
            limit: r.limit as usize,
        };
        let records = self.core.audit(token.as_deref(), filter).await?;
        Ok(Response::new(pb::AuditResponse {
            entries: records
                .into_iter()
                .map(|a| pb::AuditEntry {
                    seq: a.seq,
                    timestamp: Some(timestamp_to_pb(&a.timestamp)),
                    principal: a.principal,
                    skill: a.skill,
                    instance: a.instance,
                    method: a.method,
                    allowed: a.allowed,
                    reason: a.reason,
                    prev_hash: a.prev_hash.to_vec(),
                    hash: a.hash.to_vec(),
                })
                .collect(),
            // A broken chain is DATA_LOSS above, so an answer is verified.
            chain_verified: true,
        }))
    }
}

#[tonic::async_trait]
impl pb::clock_server::Clock for Api {
    async fn now(
        &self,
        request: Request<pb::NowRequest>,
    ) -> Result<Response<pb::NowResponse>, Status> {
        let token = token(&request)?;
        let (ts, uncertainty) = self.core.now(token.as_deref())?;
        Ok(Response::new(pb::NowResponse {
            timestamp: Some(timestamp_to_pb(&ts)),
            uncertainty_micros: uncertainty,
        }))
    }
}

/// Binds `addr` and serves until `stop` turns true. Returns the bound
/// address and the server task.
pub(crate) async fn serve(
    core: Arc<Core>,
    addr: SocketAddr,
    mut stop: watch::Receiver<bool>,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), RuntimeError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| RuntimeError::Internal(format!("cannot bind gRPC on {addr}: {e}")))?;
    let bound = listener
        .local_addr()
        .map_err(|e| RuntimeError::Internal(e.to_string()))?;

    let (health, health_service) = tonic_health::server::health_reporter();
    // Both reflection versions: grpcurl speaks v1, many libraries v1alpha.
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(synapse_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| RuntimeError::Internal(format!("reflection: {e}")))?;
    let reflection_alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(synapse_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| RuntimeError::Internal(format!("reflection: {e}")))?;
    let api = Api::new(core.clone());
    let max_in = max_decoding_bytes(&core);
    let skills = pb::skills_server::SkillsServer::new(api.clone())
        .max_decoding_message_size(max_in)
        .max_encoding_message_size(MAX_ENCODING_BYTES);
    let cluster = pb::cluster_server::ClusterServer::new(api.clone());
    let clock = pb::clock_server::ClockServer::new(api.clone());
    let capabilities = pb::capabilities_server::CapabilitiesServer::new(api.clone());
    // Peer frames carry snapshot chunks of up to 1 MiB plus framing.
    let peer = pb::peer_server::PeerServer::new(api)
        .max_decoding_message_size(synapse_consensus::MAX_PEER_FRAME_BYTES)
        .max_encoding_message_size(MAX_ENCODING_BYTES);

    // Health follows readiness: SERVING only while a leader is known.
    let health_core = core.clone();
    let mut health_stop = stop.clone();
    tokio::spawn(async move {
        let mut last = None;
        loop {
            let ready = health_core.is_ready();
            if last != Some(ready) {
                let status = if ready {
                    tonic_health::ServingStatus::Serving
                } else {
                    tonic_health::ServingStatus::NotServing
                };
                health.set_service_status("", status).await;
                health.set_service_status("synapse.v1.Skills", status).await;
                last = Some(ready);
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                _ = health_stop.changed() => break,
            }
        }
    });

    // `serve_with_incoming*` ignores the builder's `tcp_nodelay`, so set it
    // on the accepted sockets here: with Nagle on, a small frame written
    // while an earlier one is unacknowledged waits for the peer's delayed
    // ACK. Clients and peer links already set it on their side.
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    // Bounds the requests one connection can have in flight; the node-wide
    // bound is `max_inflight_invokes`.
    let mut builder = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(SERVER_KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(SERVER_KEEPALIVE_TIMEOUT));
    if let Some(tls) = &core.tls {
        builder = builder.tls_config(tls.server_config()).map_err(|e| {
            RuntimeError::InvalidArgument(format!("TLS certificate or key unusable: {e}"))
        })?;
    }
    let server = builder.concurrency_limit_per_connection(MAX_CONCURRENT_PER_CONNECTION);
    let routes = tonic::service::Routes::new(health_service)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .add_service(skills)
        .add_service(cluster)
        .add_service(clock)
        .add_service(capabilities)
        .add_service(peer)
        .prepare();
    let service = InvokeFrontDoor::new(routes, core.clone());
    let task = tokio::spawn(async move {
        let shutdown = async move {
            while !*stop.borrow() {
                if stop.changed().await.is_err() {
                    break;
                }
            }
        };
        if let Err(e) = server
            .serve_with_incoming_shutdown(service, incoming, shutdown)
            .await
        {
            tracing::error!(error = %e, "gRPC server failed");
        }
    });
    Ok((bound, task))
}

/// A snapshot damaged in transit (or at rest on the sender) is refused
/// before raft-rs sees it: installing it would fail in the state machine and
/// stop consensus on this node. Dropping it is a lost message to Raft: the
/// leader's probe is rejected and it sends a fresh snapshot later.
fn snapshot_verifies(msg: &raft::eraftpb::Message) -> bool {
    if msg.get_msg_type() != raft::eraftpb::MessageType::MsgSnapshot {
        return true;
    }
    match synapse_storage::Store::verify_snapshot_data(msg.get_snapshot().get_data()) {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(from = msg.from, index = msg.get_snapshot().get_metadata().get_index(),
                error = %e, "refusing a snapshot that fails verification; the leader will send another");
            false
        }
    }
}

#[cfg(test)]
mod snapshot_tests {
    use super::snapshot_verifies;
    use raft::eraftpb::{Message, MessageType};

    fn snapshot_msg(data: Vec<u8>) -> Message {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgSnapshot);
        m.mut_snapshot().set_data(data.into());
        m
    }

    #[test]
    fn damaged_snapshots_are_refused_intact_ones_pass() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            synapse_storage::Store::open(dir.path(), synapse_storage::StoreOptions::default())
                .unwrap();
        let good = store.snapshot_state().unwrap();
        assert!(snapshot_verifies(&snapshot_msg(good.clone())));
        for pos in [0, good.len() / 2, good.len() - 1] {
            let mut bad = good.clone();
            bad[pos] ^= 0x01;
            assert!(!snapshot_verifies(&snapshot_msg(bad)), "flip at {pos}");
        }
        assert!(!snapshot_verifies(&snapshot_msg(
            good[..good.len() - 1].to_vec()
        )));
        assert!(!snapshot_verifies(&snapshot_msg(Vec::new())));
        // Other messages are not inspected.
        let mut append = Message::default();
        append.set_msg_type(MessageType::MsgAppend);
        assert!(snapshot_verifies(&append));
    }
}

#[cfg(test)]
mod front_door_tests {
    use super::is_invoke_path;

    #[test]
    fn only_skills_invoke_is_admitted_at_the_front_door() {
        assert!(is_invoke_path("/synapse.v1.Skills/Invoke"));
        for other in [
            "/synapse.v1.Skills/GetState",
            "/synapse.v1.Skills/InvokeX",
            "/synapse.v1.Peer/ForwardInvoke",
            "/synapse.v1.Skills/",
            "/Invoke",
            "",
        ] {
            assert!(!is_invoke_path(other), "{other}");
        }
    }
}
