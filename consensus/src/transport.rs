use raft::eraftpb::Message;

/// Carries Raft messages to peers.
///
/// `send` must not block and must not queue without bound: when a peer is
/// slow or unreachable, drop messages and let Raft retransmit. Reporting
/// unreachable peers is done through [`crate::RaftHandle::report_unreachable`].
pub trait Transport: Send + Sync + 'static {
    fn send(&self, messages: Vec<Message>);
}

/// Transport for a single-voter group, which never addresses a peer.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoopTransport;

impl Transport for NoopTransport {
    fn send(&self, messages: Vec<Message>) {
        if !messages.is_empty() {
            tracing::warn!(
                count = messages.len(),
                "no transport configured; dropping raft messages"
            );
        }
    }
}
