//! How the bench's gRPC calls reach the server (`--grpc-client`): tonic's `Channel`, or the
//! generated client over one HTTP/2 connection's `SendRequest` (hyper), so that a request goes
//! from the calling task straight to the connection's task. A `Channel` puts a tower `Buffer` in
//! between: its task takes each request from a queue and hands it on, one more task wake-up per
//! call. What this saves per call is what the `Channel` costs the measured latency
//! (bench/README.md, issue 19).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tonic::body::Body;
use tonic::transport::Channel;

/// How the bench's gRPC calls reach the server (`--grpc-client`).
#[derive(Clone)]
pub enum GrpcConnection {
    /// tonic's `Channel`: a `Buffer` task in front of the connection.
    Channel(Channel),
    /// The connection's `SendRequest`, called from the worker's task.
    Direct(DirectConnection),
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<http::Request<Body>> for GrpcConnection {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        match self {
            Self::Channel(channel) => channel.poll_ready(cx).map_err(Into::into),
            Self::Direct(direct) => direct.sender.poll_ready(cx).map_err(Into::into),
        }
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        match self {
            Self::Channel(channel) => {
                let answer = channel.call(request);
                Box::pin(async move { answer.await.map_err(Into::into) })
            }
            Self::Direct(direct) => {
                let answer = direct.sender.send_request(request);
                Box::pin(async move {
                    let response = answer.await?;
                    Ok(response.map(Body::new))
                })
            }
        }
    }
}

/// One HTTP/2 connection; clones share it.
#[derive(Clone)]
pub struct DirectConnection {
    sender: SendRequest<Body>,
}

impl DirectConnection {
    /// Connects to `target` (`http://HOST:PORT`), Nagle off as the server's side.
    pub async fn connect(target: &http::Uri) -> Result<Self, Box<dyn std::error::Error>> {
        let authority = target
            .authority()
            .ok_or_else(|| format!("{target}: no host and port"))?;
        let stream = tokio::net::TcpStream::connect(authority.as_str()).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .handshake(TokioIo::new(stream))
            .await?;
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                eprintln!("a gRPC connection ended: {err}");
            }
        });
        Ok(Self { sender })
    }
}
