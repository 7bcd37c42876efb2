//! A thin gRPC client for the `synapse.v1` API that attaches the capability
//! token to every call. Used by the CLI and the tests.

use synapse_proto::v1 as pb;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};

pub use synapse_proto::v1;

/// Adds `authorization: Bearer <token>` to each request.
#[derive(Clone)]
pub struct BearerToken(Option<MetadataValue<Ascii>>);

impl tonic::service::Interceptor for BearerToken {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

type Svc = InterceptedService<Channel, BearerToken>;

/// Clients for every service over one channel.
#[derive(Clone)]
pub struct Client {
    pub skills: pb::skills_client::SkillsClient<Svc>,
    pub cluster: pb::cluster_client::ClusterClient<Svc>,
    pub clock: pb::clock_client::ClockClient<Svc>,
    /// Revocation and the audit query.
    pub capabilities: pb::capabilities_client::CapabilitiesClient<Svc>,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid endpoint `{0}`: {1}")]
    Endpoint(String, String),
    #[error("cannot connect to {0}: {1}")]
    Connect(String, String),
    #[error("token is not valid header text")]
    Token,
}

impl Client {
    /// Connects to `endpoint` (e.g. `http://127.0.0.1:50051`).
    pub async fn connect(endpoint: &str, token: Option<&str>) -> Result<Client, ClientError> {
        let channel = Endpoint::from_shared(endpoint.to_string())
            .map_err(|e| ClientError::Endpoint(endpoint.into(), e.to_string()))?
            .connect_timeout(std::time::Duration::from_secs(5))
            .connect()
            .await
            .map_err(|e| ClientError::Connect(endpoint.into(), e.to_string()))?;
        Self::with_channel(channel, token)
    }

    pub fn with_channel(channel: Channel, token: Option<&str>) -> Result<Client, ClientError> {
        let value = match token {
            Some(t) => Some(
                format!("Bearer {t}")
                    .parse()
                    .map_err(|_| ClientError::Token)?,
            ),
            None => None,
        };
        let i = BearerToken(value);
        // Matches the server's encoding bound for History responses.
        let max = 256 * 1024 * 1024;
        Ok(Client {
            skills: pb::skills_client::SkillsClient::with_interceptor(channel.clone(), i.clone())
                .max_decoding_message_size(max),
            cluster: pb::cluster_client::ClusterClient::with_interceptor(
                channel.clone(),
                i.clone(),
            ),
            capabilities: pb::capabilities_client::CapabilitiesClient::with_interceptor(
                channel.clone(),
                i.clone(),
            ),
            clock: pb::clock_client::ClockClient::with_interceptor(channel, i),
        })
    }

    /// Derives a narrower token offline (no key, no network): fewer skills,
    /// an instance pattern, fewer methods, read-only, a shorter expiry. The
    /// result can only do less than `token`; hand it to a less trusted
    /// holder. Revoking `token` also revokes the result.
    pub fn attenuate(
        token: &str,
        restriction: &synapse_runtime::guard::Restriction,
    ) -> Result<String, synapse_runtime::guard::GuardError> {
        synapse_runtime::guard::attenuate(token, restriction)
    }
}
