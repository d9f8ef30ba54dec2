//! Connecting the CLI to the coordinator's Admin API.

use super::Args;
use anyhow::{Context, Result};
use ferry_proto::v1::admin_client::AdminClient;
use ferry_proto::{Bearer, DialConfig};

/// The Admin client, carrying the caller's token.
pub type Admin =
    AdminClient<tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Bearer>>;

/// Connects the Admin client the global flags describe: to the first
/// coordinator that answers, when `--coordinator` lists several replicas.
/// A token is never sent over plaintext unless `--insecure` says so.
pub async fn admin(args: &Args) -> Result<Admin> {
    let dial = DialConfig {
        addr: args.addr.clone(),
        ca: args.ca.clone(),
        cert: args.cert.clone(),
        key: args.key.clone(),
        identity: None,
        insecure: args.insecure,
    };
    let (channel, _) = dial
        .connect_from(0)
        .await
        .with_context(|| format!("connecting to the coordinator at {}", args.addr))?;
    let token = match (&args.token, &args.token_file) {
        (Some(t), _) => t.clone(),
        (None, Some(f)) => std::fs::read_to_string(f)
            .with_context(|| format!("reading the token file {}", f.display()))?,
        (None, None) => String::new(),
    };
    // Previews of many clusters are large; listings are paged.
    Ok(AdminClient::with_interceptor(channel, Bearer::new(&token)?)
        .max_decoding_message_size(64 << 20))
}

/// Every cluster, following `ListClusters` pages of `page_size`.
pub async fn all_clusters(
    client: &mut Admin,
    page_size: u32,
) -> Result<Vec<ferry_proto::v1::Cluster>> {
    let mut out = vec![];
    let mut page_token = String::new();
    loop {
        let page = client
            .list_clusters(ferry_proto::v1::ListClustersRequest {
                page_size,
                page_token,
            })
            .await
            .map_err(status)?
            .into_inner();
        out.extend(page.clusters);
        if page.next_page_token.is_empty() {
            return Ok(out);
        }
        page_token = page.next_page_token;
    }
}

/// A gRPC error as the message the coordinator gave, for humans.
pub fn status(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{} ({:?})", s.message(), s.code())
}
