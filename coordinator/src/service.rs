//! The gRPC services: `AgentLink` for agents, `Enrollment` for agents
//! getting and renewing their identity, `Admin` for the CLI. Each maps
//! every error to a specific status code with a message naming the
//! cluster, ref or commit; none trusts what an agent sends.

mod admin;
mod agent_link;
mod enrollment;

pub use admin::AdminService;
pub use agent_link::{AgentLinkService, MAX_MESSAGE as MAX_AGENT_MESSAGE};
pub use enrollment::EnrollmentService;

use crate::{driver, repo, store};
use tonic::{Request, Status};

/// A store error as the status a client can act on.
pub(crate) fn store_status(e: store::Error) -> Status {
    match e {
        store::Error::UnknownCluster(_)
        | store::Error::UnknownRollout(_)
        | store::Error::UnknownSite(_) => Status::not_found(e.to_string()),
        store::Error::SiteExists(_) => Status::already_exists(e.to_string()),
        store::Error::Overlap { .. } | store::Error::InRollout { .. } => {
            Status::failed_precondition(e.to_string())
        }
        store::Error::Revoked(_)
        | store::Error::JoinToken(_)
        | store::Error::StaleCertificate { .. } => Status::unauthenticated(e.to_string()),
        e if e.is_transient() => Status::unavailable(e.to_string()),
        e => Status::internal(e.to_string()),
    }
}

pub(crate) fn repo_status(e: repo::Error) -> Status {
    match e {
        repo::Error::Git(ferry_proto::git::Error::UnknownRef { .. }) => {
            Status::invalid_argument(e.to_string())
        }
        repo::Error::Refused(_) | repo::Error::Policy(_) => {
            Status::failed_precondition(e.to_string())
        }
        other => Status::unavailable(other.to_string()),
    }
}

pub(crate) fn driver_status(e: driver::Error) -> Status {
    match e {
        driver::Error::Plan(_) | driver::Error::Membership(_) => {
            Status::invalid_argument(e.to_string())
        }
        driver::Error::Phase { .. } => Status::failed_precondition(e.to_string()),
        driver::Error::Store(s) => store_status(s),
        driver::Error::Repo(r) => repo_status(r),
        driver::Error::Stopped | driver::Error::NotLeading(_) | driver::Error::Unanswered(_) => {
            Status::unavailable(e.to_string())
        }
        driver::Error::Relayed { code, message } => Status::new(tonic::Code::from(code), message),
    }
}

/// The cluster (and identity generation) a request's client certificate
/// names, already verified against the coordinator's CA by TLS.
pub(crate) fn peer_cluster<T>(req: &Request<T>) -> Result<crate::pki::CertIdentity, Status> {
    let certs = req.peer_certs().ok_or_else(|| {
        Status::unauthenticated("a client certificate is required: enroll with a join token first")
    })?;
    let leaf = certs
        .first()
        .ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
    crate::pki::cluster_of(leaf).map_err(|e| Status::unauthenticated(e.to_string()))
}
