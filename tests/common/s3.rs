//! A real S3 API server for the tests: moto's server on a loopback port
//! (tests/s3/moto_server.py), started once per test binary and stopped
//! when the binary exits (the server ends when its stdin closes), and a
//! counting TCP proxy in front of it for tests that measure transfers.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// The bucket every test writes under (each test under its own prefix).
pub const BUCKET: &str = "pts-tests";

/// A running server: its endpoint; it stops when `stdin` is dropped.
pub struct Moto {
    pub endpoint: String,
    _child: Mutex<Child>,
    _stdin: Mutex<ChildStdin>,
}

/// Starts a server (`--auth`: one that refuses every credential) with
/// `buckets` created.
pub fn start_moto(buckets: &[&str], auth: bool) -> Moto {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/s3/moto_server.py");
    let mut cmd = Command::new(super::python());
    cmd.arg(script);
    for b in buckets {
        cmd.args(["--bucket", b]);
    }
    if auth {
        cmd.arg("--auth");
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the venv's python starts tests/s3/moto_server.py");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let v: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("moto_server.py printed {line:?}: {e}"));
    let stdin = child.stdin.take().unwrap();
    Moto {
        endpoint: v["endpoint"].as_str().unwrap().to_owned(),
        _child: Mutex::new(child),
        _stdin: Mutex::new(stdin),
    }
}

/// The standard AWS variables that point a client at `endpoint`.
pub fn client_env(endpoint: &str) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT_URL", endpoint.to_owned()),
        ("AWS_ALLOW_HTTP", "true".into()),
        ("AWS_ACCESS_KEY_ID", "testing".into()),
        ("AWS_SECRET_ACCESS_KEY", "testing".into()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_DEFAULT_REGION", "us-east-1".into()),
    ]
}

/// The binary's shared server, its environment set for this process (and
/// so for every child it starts) on first use: call it before anything
/// else touches the environment.
pub fn moto() -> &'static Moto {
    static MOTO: OnceLock<Moto> = OnceLock::new();
    MOTO.get_or_init(|| {
        let moto = start_moto(&[BUCKET], false);
        for (k, v) in client_env(&moto.endpoint) {
            std::env::set_var(k, v);
        }
        moto
    })
}

/// `s3://pts-tests/{test}`: a prefix of the test's own.
pub fn prefix(test: &str) -> String {
    moto();
    format!("s3://{BUCKET}/{test}")
}

/// The keys under `s3://{BUCKET}/{prefix}` (recursively), listed by the
/// server itself through the venv's boto3, not through the library.
pub fn list_keys(endpoint: &str, prefix: &str) -> Vec<String> {
    boto3_keys(endpoint, "list_objects_v2", "Contents", prefix)
}

/// The keys of the multipart uploads begun and neither completed nor
/// aborted under `prefix`, as the server lists them.
pub fn list_uploads(endpoint: &str, prefix: &str) -> Vec<String> {
    boto3_keys(endpoint, "list_multipart_uploads", "Uploads", prefix)
}

/// The `Key` of each item under `field` of boto3's `call` on the bucket.
fn boto3_keys(endpoint: &str, call: &str, field: &str, prefix: &str) -> Vec<String> {
    let out = Command::new(super::python())
        .arg("-c")
        .arg(
            "import boto3,sys,json\n\
             c=boto3.client('s3',endpoint_url=sys.argv[1],aws_access_key_id='testing',aws_secret_access_key='testing',region_name='us-east-1')\n\
             r=getattr(c,sys.argv[4])(Bucket=sys.argv[2],Prefix=sys.argv[3])\n\
             print(json.dumps([o['Key'] for o in r.get(sys.argv[5],[])]))",
        )
        .args([endpoint, BUCKET, prefix, call, field])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A TCP proxy on a loopback port that forwards to `upstream`
/// (`http://host:port`) and counts the bytes the server sends back.
pub struct CountingProxy {
    pub endpoint: String,
    pub from_server: Arc<AtomicU64>,
}

impl CountingProxy {
    pub fn start(upstream: &str) -> CountingProxy {
        let target = upstream.trim_start_matches("http://").to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let from_server = Arc::new(AtomicU64::new(0));
        let counter = from_server.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(&target) else {
                    continue;
                };
                let counter = counter.clone();
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || pump(client, server, None));
                std::thread::spawn(move || pump(s2, c2, Some(counter)));
            }
        });
        CountingProxy { endpoint, from_server }
    }

    pub fn bytes_from_server(&self) -> u64 {
        self.from_server.load(Ordering::SeqCst)
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, counter: Option<Arc<AtomicU64>>) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if let Some(c) = &counter {
                    c.fetch_add(n as u64, Ordering::SeqCst);
                }
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}
