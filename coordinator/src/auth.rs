//! Who may do what on the Admin API: bearer tokens with a role. Tokens are
//! random, shown once, and stored only as SHA-256 hashes; a lookup is by
//! hash, so no secret is ever compared byte by byte. Never logs a token.

use crate::store::Store;
use base64::Engine;
use tonic::{Request, Status};

/// What a token may do; each role includes the ones before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Only reports what a site's Git mirror holds (`ferry mirror sync`,
    /// bundle imports); reads nothing.
    Mirror,
    /// Reads clusters, pins, rollouts, the ledger and events.
    Viewer,
    /// Also pins and runs rollouts.
    Operator,
    /// Also enrolls and revokes clusters and creates tokens.
    Admin,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "mirror" => Some(Role::Mirror),
            "viewer" => Some(Role::Viewer),
            "operator" => Some(Role::Operator),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Mirror => "mirror",
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

/// The authenticated caller of an Admin request.
#[derive(Clone, Debug)]
pub struct Caller {
    pub name: String,
    pub role: Role,
}

/// A new random secret with a recognisable prefix.
pub fn new_secret(prefix: &str) -> String {
    let bytes = crate::pki::random_bytes(32);
    format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// The stored form of a secret.
pub fn hash(secret: &str) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, secret.trim().as_bytes());
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The caller of an Admin request, by its bearer token, if it has at least
/// `role`. Every Admin call starts here.
pub async fn require<T>(
    store: &dyn Store,
    req: &Request<T>,
    role: Role,
    action: &str,
) -> Result<Caller, Status> {
    let token = req
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| Status::unauthenticated("an API token is required (ferry --token or FERRY_TOKEN; the first admin token is in the coordinator's data dir)"))?;
    let (name, stored_role) = store
        .token(&hash(token))
        .await
        .map_err(|e| Status::unavailable(format!("checking the API token: {e}")))?
        .ok_or_else(|| Status::unauthenticated("unknown API token"))?;
    let caller_role = Role::parse(&stored_role)
        .ok_or_else(|| Status::internal("a stored token has an unknown role"))?;
    if caller_role < role {
        return Err(Status::permission_denied(format!(
            "{name} has role {}; {action} needs {}",
            caller_role.as_str(),
            role.as_str()
        )));
    }
    Ok(Caller {
        name,
        role: caller_role,
    })
}
