//! A thin gRPC client for the `synapse.v1` API that attaches the capability
//! token to every call. Used by the CLI and the tests.

use std::path::PathBuf;
use synapse_proto::v1 as pb;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
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
    #[error("TLS: {0}")]
    Tls(String),
}

/// TLS for a client: the cluster CA to trust (only it, not the system
/// roots) and, optionally, a client certificate and key for mutual TLS.
#[derive(Clone, Debug, Default)]
pub struct ClientTls {
    pub ca: PathBuf,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl ClientTls {
    /// Reads the files into a tonic config.
    pub fn config(&self) -> Result<ClientTlsConfig, ClientError> {
        let read = |p: &PathBuf| {
            std::fs::read(p)
                .map_err(|e| ClientError::Tls(format!("cannot read {}: {e}", p.display())))
        };
        let mut cfg = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(&self.ca)?));
        match (&self.cert, &self.key) {
            (Some(c), Some(k)) => cfg = cfg.identity(Identity::from_pem(read(c)?, read(k)?)),
            (None, None) => {}
            _ => {
                return Err(ClientError::Tls(
                    "a client certificate needs both --tls-cert and --tls-key".into(),
                ))
            }
        }
        Ok(cfg)
    }
}

/// With TLS, a plain `http://` (or scheme-less) endpoint becomes `https://`;
/// without, a scheme-less one becomes `http://`.
pub fn endpoint_uri(endpoint: &str, tls: bool) -> String {
    match (endpoint.split_once("://"), tls) {
        (Some(("http", rest)), true) => format!("https://{rest}"),
        (Some(_), _) => endpoint.to_string(),
        (None, true) => format!("https://{endpoint}"),
        (None, false) => format!("http://{endpoint}"),
    }
}

/// Opens a channel to `endpoint`, over TLS when `tls` is given.
pub async fn channel(endpoint: &str, tls: Option<&ClientTls>) -> Result<Channel, ClientError> {
    let uri = endpoint_uri(endpoint, tls.is_some());
    let mut ep = Endpoint::from_shared(uri.clone())
        .map_err(|e| ClientError::Endpoint(endpoint.into(), e.to_string()))?
        .connect_timeout(std::time::Duration::from_secs(5));
    if let Some(tls) = tls {
        ep = ep
            .tls_config(tls.config()?)
            .map_err(|e| ClientError::Tls(e.to_string()))?;
    }
    ep.connect().await.map_err(|e| {
        // tonic's top-level message is just "transport error"; the cause
        // (refused, bad certificate, ...) is what the user needs.
        let mut msg = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            msg = format!("{msg}: {s}");
            src = s.source();
        }
        ClientError::Connect(uri.clone(), msg)
    })
}

impl Client {
    /// Connects to `endpoint` (e.g. `http://127.0.0.1:50051`).
    pub async fn connect(endpoint: &str, token: Option<&str>) -> Result<Client, ClientError> {
        Self::connect_tls(endpoint, token, None).await
    }

    /// Connects over TLS when `tls` is given (see [`ClientTls`]).
    pub async fn connect_tls(
        endpoint: &str,
        token: Option<&str>,
        tls: Option<&ClientTls>,
    ) -> Result<Client, ClientError> {
        let channel = channel(endpoint, tls).await?;
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
