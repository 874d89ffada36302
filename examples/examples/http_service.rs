//! A small HTTP service that hands its CPU-heavy requests to a Blitzen cluster and awaits them:
//! `GET /primes?below=N` counts the primes below N in a worker process, while the service's one
//! runtime thread goes on answering other requests. A client that hangs up cancels its task
//! (`abort_on_drop`), and a task that runs past its timeout is answered with 504.
//!
//! Run with `cargo run --release --example http_service` and try
//! `curl 'http://127.0.0.1:3000/primes?below=5000000'`; `--once` sends a few requests to itself,
//! prints the answers and stops (the test of this example does that).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use blitzen::TaskError;
use blitzen::distributed::{DistributedDispatcher, LocalCluster};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The CPU-bound work: the number of primes below `n`.
#[blitzen::task]
fn count_primes(n: u64) -> u64 {
    (2..n).filter(|&k| (2..).take_while(|d| d * d <= k).all(|d| k % d != 0)).count() as u64
}

/// The longest a request's task may run.
const TASK_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Deserialize)]
struct Primes {
    below: u64,
}

#[derive(Serialize)]
struct Counted {
    below: u64,
    primes: u64,
}

/// Runs the count on the cluster and awaits it. If the client hangs up, axum drops this
/// future, and `abort_on_drop` cancels the task.
async fn primes(
    State(dispatcher): State<Arc<DistributedDispatcher>>,
    Query(Primes { below }): Query<Primes>,
) -> Result<Json<Counted>, (StatusCode, String)> {
    let id = dispatcher.run_with_timeout(count_primes, below, TASK_TIMEOUT);
    match dispatcher.result(id).abort_on_drop().await {
        Ok(primes) => Ok(Json(Counted { below, primes })),
        Err(e @ TaskError::TimedOut { .. }) => Err((StatusCode::GATEWAY_TIMEOUT, e.to_string())),
        Err(e) => Err((StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    blitzen::worker_main();
    if std::env::var_os("RUST_LOG").is_none() {
        blitzen::logging::set_loglevel("error")?;
    }
    let once = std::env::args().any(|a| a == "--once");
    let cluster = LocalCluster::start(2)?;
    let dispatcher = Arc::new(cluster.dispatcher());
    let app = Router::new().route("/primes", get(primes)).with_state(dispatcher.clone());

    // One thread serves every request: awaiting a task does not hold it.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let port = if once { 0 } else { 3000 };
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        let addr = listener.local_addr()?;
        println!("serving on http://{addr}/primes?below=N (tasks on {})", cluster.addr());
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        if !once {
            return server.await?.map_err(Into::into);
        }
        // Several requests at once: each waits for its own task, none for another's.
        let sizes = [100_000, 200_000, 10, 300_000];
        let mut requests = tokio::task::JoinSet::new();
        for below in sizes {
            requests.spawn(async move {
                (below, get_text(addr, &format!("/primes?below={below}")).await)
            });
        }
        let mut answers = Vec::new();
        while let Some(answer) = requests.join_next().await {
            answers.push(answer?);
        }
        answers.sort_by_key(|(below, _)| *below);
        for (below, answer) in answers {
            println!("below {below:>7}: {}", answer.map_err(|e| e.to_string())?);
        }
        // A client that hangs up before its answer: the service cancels the task.
        let mut hasty = tokio::net::TcpStream::connect(addr).await?;
        hasty.write_all(b"GET /primes?below=500000000 HTTP/1.1\r\nhost: x\r\n\r\n").await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        drop(hasty);
        let hung_up = std::time::Instant::now();
        let left = dispatcher.join_async().await;
        let cancelled = left.is_empty();
        println!(
            "a client that hung up: its task ended {:.1} s later ({}), {} results left",
            hung_up.elapsed().as_secs_f64(),
            if cancelled { "cancelled" } else { "it ran to its end" },
            left.len()
        );
        server.abort();
        Ok::<_, Box<dyn std::error::Error>>(())
    })?;
    drop(dispatcher);
    cluster.shutdown();
    Ok(())
}

/// A bare HTTP/1.1 GET: the status line's code and the body.
async fn get_text(
    addr: std::net::SocketAddr,
    path: &str,
) -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let status = response.split(' ').nth(1).unwrap_or("?").to_string();
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    Ok(format!("{status} {body}"))
}
