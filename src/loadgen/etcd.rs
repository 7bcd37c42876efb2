//! The two etcd v3 KV calls the load generator needs (`etcdserverpb.KV/Put`
//! and `/Range`), as hand-written prost messages over the same tonic channel
//! type the Synapse client uses. Only the fields we send or read are declared;
//! prost skips the others when decoding. This avoids a build-time `protoc`
//! (the `etcd-client` crate's build script needs one) and a second gRPC stack.

use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;
use tonic::Status;

#[derive(Clone, PartialEq, prost::Message)]
pub struct PutRequest {
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ResponseHeader {
    #[prost(int64, tag = "3")]
    pub revision: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PutResponse {
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct RangeRequest {
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    /// false = linearizable read (etcd's default), like Synapse's reads.
    #[prost(bool, tag = "7")]
    pub serializable: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct RangeResponse {
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
    #[prost(int64, tag = "4")]
    pub count: i64,
}

/// A KV client on one shared channel.
#[derive(Clone)]
pub struct Kv {
    inner: tonic::client::Grpc<Channel>,
}

impl Kv {
    pub fn new(channel: Channel) -> Kv {
        Kv {
            inner: tonic::client::Grpc::new(channel),
        }
    }

    async fn ready(&mut self) -> Result<(), Status> {
        self.inner
            .ready()
            .await
            .map_err(|e| Status::unavailable(format!("channel not ready: {e}")))
    }

    pub async fn put(&mut self, key: Vec<u8>, value: Vec<u8>) -> Result<PutResponse, Status> {
        self.ready().await?;
        let codec = tonic_prost::ProstCodec::<PutRequest, PutResponse>::default();
        let path = PathAndQuery::from_static("/etcdserverpb.KV/Put");
        let req = tonic::Request::new(PutRequest { key, value });
        Ok(self.inner.unary(req, path, codec).await?.into_inner())
    }

    pub async fn range(&mut self, key: Vec<u8>) -> Result<RangeResponse, Status> {
        self.ready().await?;
        let codec = tonic_prost::ProstCodec::<RangeRequest, RangeResponse>::default();
        let path = PathAndQuery::from_static("/etcdserverpb.KV/Range");
        let req = tonic::Request::new(RangeRequest {
            key,
            serializable: false,
        });
        Ok(self.inner.unary(req, path, codec).await?.into_inner())
    }
}
