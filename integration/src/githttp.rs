//! A real smart-HTTP Git server for tests: every request runs Debian's
//! `git http-backend` as a CGI program. Plain HTTP or HTTPS (with its own
//! CA) on 127.0.0.1, optionally demanding basic or bearer credentials.

use anyhow::Result;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;

/// How an [`HttpGit`] serves.
#[derive(Clone, Debug, Default)]
pub struct HttpGitOptions {
    /// Serve HTTPS with a generated CA.
    pub tls: bool,
    /// Demand HTTP basic auth with this username and password.
    pub basic: Option<(String, String)>,
    /// Accept this bearer token too.
    pub bearer: Option<String>,
}

/// A running `git http-backend` bridge; stops when dropped.
pub struct HttpGit {
    /// `http(s)://127.0.0.1:PORT` (append `/NAME.git`).
    pub base: String,
    /// The CA (PEM) of an HTTPS server.
    pub ca_pem: Option<String>,
    stop: CancellationToken,
}

impl Drop for HttpGit {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl HttpGit {
    /// Serves every repository below `root` over plain HTTP, to anyone.
    pub async fn start(root: PathBuf) -> Result<HttpGit> {
        Self::start_with(root, HttpGitOptions::default()).await
    }

    /// Serves every repository below `root`.
    pub async fn start_with(root: PathBuf, opts: HttpGitOptions) -> Result<HttpGit> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (acceptor, ca_pem) = if opts.tls {
            let ca = kube_emulator::tls::Ca::new("git-server-ca")?;
            let leaf = ca.issue("git-server", &["localhost", "127.0.0.1"], false)?;
            (
                Some(tokio_rustls::TlsAcceptor::from(
                    kube_emulator::tls::server_config(&leaf)?,
                )),
                Some(ca.cert_pem()),
            )
        } else {
            (None, None)
        };
        let auth = Arc::new(Auth::new(&opts));
        let stop = CancellationToken::new();
        let token = stop.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = tokio::select! {
                    _ = token.cancelled() => return,
                    r = listener.accept() => match r { Ok(c) => c, Err(_) => continue },
                };
                let root = root.clone();
                let token = token.clone();
                let acceptor = acceptor.clone();
                let auth = auth.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let (root, auth) = (root.clone(), auth.clone());
                        async move {
                            if let Some(denied) = auth.check(&req) {
                                return Ok::<_, Infallible>(denied);
                            }
                            cgi(root, req).await
                        }
                    });
                    let io = match acceptor {
                        Some(a) => match a.accept(tcp).await {
                            Ok(tls) => Either::Left(tls),
                            Err(_) => return,
                        },
                        None => Either::Right(tcp),
                    };
                    let conn = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    tokio::select! {
                        _ = token.cancelled() => {}
                        _ = conn.serve_connection(TokioIo::new(io), svc) => {}
                    }
                });
            }
        });
        let scheme = if opts.tls { "https" } else { "http" };
        Ok(HttpGit {
            base: format!("{scheme}://{addr}"),
            ca_pem,
            stop,
        })
    }
}

/// The Authorization headers a server accepts; none means open.
struct Auth {
    accepted: Vec<String>,
}

impl Auth {
    fn new(opts: &HttpGitOptions) -> Self {
        use base64::Engine;
        let mut accepted = vec![];
        if let Some((u, p)) = &opts.basic {
            let b = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
            accepted.push(format!("Basic {b}"));
        }
        if let Some(t) = &opts.bearer {
            accepted.push(format!("Bearer {t}"));
        }
        Auth { accepted }
    }

    /// The refusal for a request without accepted credentials.
    fn check<B>(&self, req: &Request<B>) -> Option<Response<Full<Bytes>>> {
        if self.accepted.is_empty() {
            return None;
        }
        let given = req
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if given.is_some_and(|g| self.accepted.iter().any(|a| a == g)) {
            return None;
        }
        let mut r = reply(StatusCode::UNAUTHORIZED, "authentication required");
        r.headers_mut().insert(
            hyper::header::WWW_AUTHENTICATE,
            hyper::header::HeaderValue::from_static("Basic realm=\"git\""),
        );
        Some(r)
    }
}

fn reply(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r
}

async fn cgi(
    root: PathBuf,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return Ok(reply(StatusCode::BAD_REQUEST, "unreadable body")),
    };
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let mut cmd = tokio::process::Command::new("git");
    cmd.arg("http-backend")
        .env("GIT_PROJECT_ROOT", &root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("REQUEST_METHOD", parts.method.as_str())
        .env("PATH_INFO", parts.uri.path())
        .env("QUERY_STRING", parts.uri.query().unwrap_or(""))
        .env("CONTENT_TYPE", header("content-type"))
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("REMOTE_ADDR", "127.0.0.1")
        .env("GIT_PROTOCOL", header("git-protocol"))
        .env("HTTP_CONTENT_ENCODING", header("content-encoding"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return Ok(reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("git http-backend: {e}"),
            ));
        }
    };
    let mut stdin = child.stdin.take().expect("piped");
    let writer = tokio::spawn(async move {
        let _ = stdin.write_all(&body).await;
    });
    let out = match child.wait_with_output().await {
        Ok(o) => o.stdout,
        Err(e) => {
            return Ok(reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("git http-backend: {e}"),
            ));
        }
    };
    let _ = writer.await;
    // CGI output: headers, a blank line, the body.
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4))
        .or_else(|| out.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2)));
    let Some((end, sep)) = split else {
        return Ok(reply(
            StatusCode::BAD_GATEWAY,
            "git http-backend wrote no headers",
        ));
    };
    let mut resp = Response::new(Full::new(Bytes::copy_from_slice(&out[end + sep..])));
    for line in String::from_utf8_lossy(&out[..end]).lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        if k.eq_ignore_ascii_case("status") {
            let code = v
                .split_whitespace()
                .next()
                .and_then(|c| c.parse().ok())
                .unwrap_or(500);
            *resp.status_mut() =
                StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        } else if let (Ok(name), Ok(value)) = (
            hyper::header::HeaderName::from_bytes(k.trim().as_bytes()),
            hyper::header::HeaderValue::from_str(v),
        ) {
            resp.headers_mut().append(name, value);
        }
    }
    Ok(resp)
}
