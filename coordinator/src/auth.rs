//! Who may do what on the Admin API: bearer tokens with a role. Tokens are
//! random, shown once, and stored only as SHA-256 hashes; a lookup is by
//! hash, so no secret is ever compared byte by byte. Never logs a token.

use crate::store::Store;
use base64::Engine;
use std::sync::Arc;
use tonic::{Request, Status};

/// What a token may do; each role includes the ones before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
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
            "viewer" => Some(Role::Viewer),
            "operator" => Some(Role::Operator),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
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

/// Authenticates every Admin request by its bearer token.
#[derive(Clone)]
pub struct Authenticate {
    pub store: Arc<Store>,
}

impl tonic::service::Interceptor for Authenticate {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        let token = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| Status::unauthenticated("an API token is required (ferry --token or FERRY_TOKEN; the first admin token is in the coordinator's data dir)"))?;
        let (name, role) = self
            .store
            .token(&hash(token))
            .map_err(|e| Status::internal(e.to_string()))?
            .ok_or_else(|| Status::unauthenticated("unknown API token"))?;
        let role = Role::parse(&role)
            .ok_or_else(|| Status::internal("a stored token has an unknown role"))?;
        req.extensions_mut().insert(Caller { name, role });
        Ok(req)
    }
}

/// The caller, if it has at least `role`.
pub fn require<T>(req: &Request<T>, role: Role, action: &str) -> Result<Caller, Status> {
    let caller = req
        .extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("not authenticated"))?;
    if caller.role < role {
        return Err(Status::permission_denied(format!(
            "{} has role {}; {action} needs {}",
            caller.name,
            caller.role.as_str(),
            role.as_str()
        )));
    }
    Ok(caller)
}
