//! `synapse bench`: a bounded load generator over gRPC (filled in by the
//! performance work).

use clap::Args;

#[derive(Args, Debug, Clone)]
pub struct BenchOpts {
    /// Comma-separated gRPC endpoints of the cluster.
    #[arg(long, default_value = "http://127.0.0.1:50051", value_delimiter = ',')]
    pub endpoints: Vec<String>,
}

pub async fn run(_opts: BenchOpts) -> Result<(), String> {
    Err("synapse bench is not built yet".into())
}
