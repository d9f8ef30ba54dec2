//! `Enrollment`: a one-time join token buys a cluster its client
//! certificate; the certificate renews itself. Whatever a CSR asks for, the
//! certificate names only the cluster the token (or current certificate)
//! names.

use super::{peer_cluster, store_status};
use crate::auth;
use crate::hub::Hub;
use crate::pki::Pki;
use ferry_proto::now_unix_ms;
use ferry_proto::v1::enrollment_server::Enrollment;
use ferry_proto::v1::{EnrollRequest, EnrollResponse, RenewRequest};
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct EnrollmentService {
    pub hub: Arc<Hub>,
    pub pki: Option<Arc<Pki>>,
}

impl EnrollmentService {
    fn issue(
        &self,
        cluster: &str,
        generation: i64,
        csr_pem: &str,
    ) -> Result<EnrollResponse, Status> {
        let pki = self.pki.as_ref().ok_or_else(|| {
            Status::failed_precondition(
                "this coordinator runs without TLS (--insecure) and cannot enroll",
            )
        })?;
        let issued = pki
            .sign(cluster, generation, csr_pem)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let ms = |t: std::time::SystemTime| {
            t.duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0)
        };
        tracing::info!(
            cluster,
            not_after = ms(issued.not_after),
            "issued a client certificate"
        );
        Ok(EnrollResponse {
            cluster: cluster.to_string(),
            cert_pem: issued.cert_pem,
            ca_pem: pki.ca_pem.clone(),
            not_before_unix_ms: ms(issued.not_before),
            not_after_unix_ms: ms(issued.not_after),
        })
    }
}

#[tonic::async_trait]
impl Enrollment for EnrollmentService {
    async fn enroll(
        &self,
        req: Request<EnrollRequest>,
    ) -> Result<Response<EnrollResponse>, Status> {
        let r = req.into_inner();
        let (cluster, generation) = self
            .hub
            .store
            .redeem(&auth::hash(&r.join_token), now_unix_ms())
            .await
            .map_err(store_status)?;
        Ok(Response::new(self.issue(&cluster, generation, &r.csr_pem)?))
    }

    async fn renew(&self, req: Request<RenewRequest>) -> Result<Response<EnrollResponse>, Status> {
        // Only a certificate of the cluster's current identity renews.
        let id = peer_cluster(&req)?;
        let generation = self
            .hub
            .store
            .check_certificate(&id.cluster, Some(id.generation))
            .await
            .map_err(|e| match e {
                crate::store::Error::UnknownCluster(_) => Status::unauthenticated(e.to_string()),
                other => store_status(other),
            })?;
        Ok(Response::new(self.issue(
            &id.cluster,
            generation,
            &req.into_inner().csr_pem,
        )?))
    }
}
