//! The limits a verified upload is bounded by: SHA-256 with the implementation the
//! blob node uses, and what the gRPC transport alone carries here.

use std::pin::Pin;
use std::time::Instant;

use bytes::Bytes;
use futures::Stream;
use imagestore_proto::transport::{CONNECTION_WINDOW, MAX_FRAME, SERVER_STREAM_WINDOW};
use imagestore_proto::v1 as pb;
use sha2::Digest;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use crate::{BenchResult, Report, median, round2};

/// Bytes per message, as the CLI and the blob-node tests send them.
pub const CHUNK: usize = 1 << 20;

/// The cores this process may run on: what every figure here shares.
pub fn nproc() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// CPU model, the flags that decide hashing speed, cores, and OpenSSL's figure.
pub fn machine(report: &Report) {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        cpuinfo
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_default()
    };
    report.put("cpu", field("model name"), "");
    let flags = field("flags");
    let present: Vec<&str> = ["sha_ni", "avx2", "avx512f", "aes"]
        .into_iter()
        .filter(|f| flags.split_whitespace().any(|x| x == *f))
        .collect();
    report.put("cpu_flags", present.join(" "), "");
    report.put("nproc", nproc() as u64, "cores");
    if let Some(mb_s) = openssl_sha256() {
        report.put("openssl_sha256_mb_s", round2(mb_s), "MB/s");
    }
}

/// `openssl speed -evp sha256` on 16 KiB blocks (its largest default), if there.
fn openssl_sha256() -> Option<f64> {
    let out = std::process::Command::new("openssl")
        .args(["speed", "-seconds", "1", "-evp", "sha256"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .rev()
        .find(|l| l.to_lowercase().starts_with("sha256"))?;
    // "sha256  …  1234567.89k" per block size; the last column is 16384 bytes.
    let last = line.split_whitespace().last()?;
    let kb: f64 = last.trim_end_matches('k').parse().ok()?;
    Some(kb * 1000.0 / 1e6)
}

/// SHA-256 (the sha2 crate, as the blob node) over the same 1 MiB updates.
pub fn hash_mb_s(report: &Report, runs: usize) -> f64 {
    let buf = vec![0x5au8; 64 << 20];
    let mut figures = Vec::new();
    for _ in 0..runs {
        let started = Instant::now();
        let mut h = sha2::Sha256::new();
        for _ in 0..8 {
            for piece in buf.chunks(CHUNK) {
                h.update(piece);
            }
        }
        std::hint::black_box(h.finalize());
        figures.push((8 * buf.len()) as f64 / started.elapsed().as_secs_f64() / 1e6);
    }
    let mb_s = median(figures);
    report.put("hash_mb_s", round2(mb_s), "MB/s");
    mb_s
}

/// A client-streaming sink that only counts, and a source that sends
/// `read_limit` bytes from one buffer: the transport's own limits.
struct Sink;

type Downloads = Pin<Box<dyn Stream<Item = Result<pb::DownloadResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::blobs_server::Blobs for Sink {
    async fn upload(
        &self,
        request: Request<Streaming<pb::UploadRequest>>,
    ) -> Result<Response<pb::UploadResponse>, Status> {
        let mut stream = request.into_inner();
        let mut n = 0u64;
        while let Some(m) = stream.next().await {
            n += m?.data.len() as u64;
        }
        Ok(Response::new(pb::UploadResponse {
            committed_size: n,
            complete: true,
            image: None,
        }))
    }

    type DownloadStream = Downloads;

    async fn download(
        &self,
        request: Request<pb::DownloadRequest>,
    ) -> Result<Response<Self::DownloadStream>, Status> {
        let size = request.into_inner().read_limit;
        let chunk = Bytes::from(vec![0x5au8; CHUNK]);
        let messages = (0..size.div_ceil(CHUNK as u64)).map(move |i| {
            let n = (size - i * CHUNK as u64).min(CHUNK as u64) as usize;
            Ok(pb::DownloadResponse {
                data: chunk.slice(..n),
                ..Default::default()
            })
        });
        Ok(Response::new(Box::pin(tokio_stream::iter(messages))))
    }
}

/// Downloads what `request` asks for, counting the bytes.
pub async fn download(
    client: &mut imagestore_client::BlobsClient,
    request: pb::DownloadRequest,
) -> BenchResult<u64> {
    let mut stream = client.download(request).await?.into_inner();
    let mut got = 0u64;
    while let Some(m) = stream.next().await {
        got += m?.data.len() as u64;
    }
    Ok(got)
}

/// What the bare transport does on this machine, each way.
pub struct Transport {
    pub sink_mb_s: f64,
    /// CPU both ends spend per GB carried up (client-streaming).
    pub sink_cpu_s_per_gb: f64,
    pub source_mb_s: f64,
    /// CPU both ends spend per GB carried down (server-streaming).
    pub source_cpu_s_per_gb: f64,
}

/// MB/s and CPU s/GB of `size` bytes through a bare tonic client-streaming
/// sink and from a bare server-streaming source, with the servers' window and
/// frame sizes and the clients' chunk size.
pub async fn transport(report: &Report, size: u64, runs: usize) -> BenchResult<Transport> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .initial_stream_window_size(Some(SERVER_STREAM_WINDOW))
            .initial_connection_window_size(Some(CONNECTION_WINDOW))
            .max_frame_size(Some(MAX_FRAME))
            .add_service(
                pb::blobs_server::BlobsServer::new(Sink)
                    .max_decoding_message_size(8 << 20)
                    .max_encoding_message_size(8 << 20),
            )
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                async {
                    let _ = stopped.await;
                },
            ),
    );
    let client = imagestore_client::blobs_client(
        imagestore_client::connect(&format!("http://{addr}")).await?,
    );
    let chunk = Bytes::from(vec![0x5au8; CHUNK]);
    let (mut up, mut down) = (Vec::new(), Vec::new());
    let (mut up_cpu, mut down_cpu, mut up_bytes, mut down_bytes) = (0.0, 0.0, 0u64, 0u64);
    for _ in 0..runs {
        let count = size / CHUNK as u64;
        let chunk = chunk.clone();
        let messages = tokio_stream::iter((0..count).map(move |i| pb::UploadRequest {
            write_offset: i * CHUNK as u64,
            data: chunk.clone(),
            ..Default::default()
        }));
        let cpu = crate::procs::cpu_seconds("self");
        let started = Instant::now();
        let got = client.clone().upload(messages).await?.into_inner();
        up.push(got.committed_size as f64 / started.elapsed().as_secs_f64() / 1e6);
        up_cpu += crate::procs::cpu_seconds("self") - cpu;
        up_bytes += got.committed_size;

        let cpu = crate::procs::cpu_seconds("self");
        let started = Instant::now();
        let got = download(
            &mut client.clone(),
            pb::DownloadRequest {
                read_limit: size,
                ..Default::default()
            },
        )
        .await?;
        down.push(got as f64 / started.elapsed().as_secs_f64() / 1e6);
        down_cpu += crate::procs::cpu_seconds("self") - cpu;
        down_bytes += got;
    }
    let _ = stop.send(());
    let _ = server.await;
    let figures = Transport {
        sink_mb_s: median(up),
        sink_cpu_s_per_gb: up_cpu / (up_bytes as f64 / 1e9),
        source_mb_s: median(down),
        source_cpu_s_per_gb: down_cpu / (down_bytes as f64 / 1e9),
    };
    // What carrying the bytes costs both ends together, in CPU: the transport's
    // share of a transfer's budget.
    report.put(
        "grpc_sink_cpu_s_per_gb",
        round2(figures.sink_cpu_s_per_gb),
        "CPU s/GB",
    );
    report.put("grpc_sink_mb_s", round2(figures.sink_mb_s), "MB/s");
    report.put(
        "grpc_source_cpu_s_per_gb",
        round2(figures.source_cpu_s_per_gb),
        "CPU s/GB",
    );
    report.put("grpc_source_mb_s", round2(figures.source_mb_s), "MB/s");
    Ok(figures)
}
