//! `ferry token create`.

use super::{Admin, status};
use anyhow::Result;
use clap::Subcommand;
use ferry_proto::v1::CreateTokenRequest;
use serde_json::json;

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Create an API token (admin); it is shown once.
    Create {
        /// mirror (reports what a site mirror holds, nothing else), viewer, operator or admin.
        #[arg(long)]
        role: String,
        /// Who or what it is for: the actor in the ledger.
        #[arg(long)]
        name: String,
    },
}

pub async fn execute(client: &mut Admin, cmd: TokenCommand, json: bool) -> Result<String> {
    let TokenCommand::Create { role, name } = cmd;
    let t = client
        .create_token(CreateTokenRequest {
            role: role.clone(),
            name: name.clone(),
        })
        .await
        .map_err(status)?
        .into_inner();
    Ok(if json {
        serde_json::to_string_pretty(&json!({"name": name, "role": role, "token": t.token}))? + "\n"
    } else {
        format!("{}\n", t.token)
    })
}
