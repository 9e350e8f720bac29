//! The cost of watching a run (issue 23): the 1000-visit loop and a `foreach` over 1,000
//! children, (a) with nothing subscribed, (b) with the event stream consumed, (c) (feature
//! `otel`) with `otel::Telemetry` exporting spans and metrics to a loopback OTLP/HTTP receiver.
//!
//! `cargo bench -p flatmachine-runtime --features otel --bench observability`
//!
//! With `FLATMACHINE_BENCH_CPU_TIME=1` (Unix) the figures are the bench thread's CPU time
//! instead of wall time: the runs and the stream's consumer all run on that one thread (a
//! current-thread runtime), so this leaves out the time other processes of a loaded machine
//! take the CPU away. (The OTLP exporter's own thread is then left out too.)

use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::{Criterion, criterion_group};
use flatmachine_runtime::{Context, Machine, RunOptions, StateError, Value};
use futures::StreamExt;
use serde_json::json;
use std::time::Duration;

flatmachine_runtime::flatmachine!("benches/machines/loop.yml");
flatmachine_runtime::flatmachine!("benches/machines/foreach.yml");

fn inc(ctx: &mut Context) -> Result<(), StateError> {
    let i = ctx.get("i").and_then(Value::as_i64).unwrap_or(0);
    ctx.insert("i".into(), json!(i + 1));
    Ok(())
}

fn double(ctx: &mut Context) -> Result<(), StateError> {
    let x = ctx.get("x").and_then(Value::as_i64).unwrap_or(0);
    ctx.insert("y".into(), json!(2 * x));
    Ok(())
}

fn machines() -> Vec<(&'static str, Machine, Value)> {
    let looped = Machine::of::<bench_loop::Machine>()
        .max_steps(10_000)
        .no_persistence()
        .action_mut("inc", |ctx, _| Box::pin(std::future::ready(inc(ctx))))
        .build()
        .unwrap();
    let foreach = Machine::of::<bench_foreach::Machine>()
        .no_persistence()
        .action_mut("double", |ctx, _| Box::pin(std::future::ready(double(ctx))))
        .build()
        .unwrap();
    let items: Vec<i64> = (0..1000).collect();
    vec![
        (
            "loop_1000_visits",
            looped,
            json!({"n": 1000, "label": "bench"}),
        ),
        ("foreach_1000", foreach, json!({"items": items})),
    ]
}

/// Consumes every event of a streamed run.
async fn streamed(machine: &Machine, input: Value) -> usize {
    let mut stream = machine.stream(input, RunOptions::new());
    let mut events = 0;
    while let Some(e) = stream.next().await {
        events += std::hint::black_box(&e).machine.len().min(1);
    }
    stream.result().await.unwrap();
    events
}

#[cfg(feature = "otel")]
fn loopback_otlp() -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for socket in listener.incoming() {
            let Ok(mut socket) = socket else { return };
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 65536];
                loop {
                    let Some(head) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match socket.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    let text = String::from_utf8_lossy(&buf[..head]).to_lowercase();
                    let len: usize = text
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    while buf.len() < head + 4 + len {
                        match socket.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    buf.drain(..head + 4 + len);
                    let reply = "HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n";
                    if socket.write_all(reply.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    format!("http://{addr}")
}

/// The calling thread's CPU time (criterion measures with it under
/// `FLATMACHINE_BENCH_CPU_TIME=1`).
struct ThreadCpuTime;

fn thread_cpu_time() -> Duration {
    #[cfg(unix)]
    {
        let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
        Duration::new(
            u64::try_from(t.tv_sec).unwrap_or(0),
            u32::try_from(t.tv_nsec).unwrap_or(0),
        )
    }
    #[cfg(not(unix))]
    {
        panic!("FLATMACHINE_BENCH_CPU_TIME needs a Unix thread CPU clock")
    }
}

impl Measurement for ThreadCpuTime {
    type Intermediate = Duration;
    type Value = Duration;

    fn start(&self) -> Duration {
        thread_cpu_time()
    }

    fn end(&self, started: Duration) -> Duration {
        thread_cpu_time().saturating_sub(started)
    }

    fn add(&self, a: &Duration, b: &Duration) -> Duration {
        *a + *b
    }

    fn zero(&self) -> Duration {
        Duration::ZERO
    }

    fn to_f64(&self, value: &Duration) -> f64 {
        value.as_nanos() as f64
    }

    fn formatter(&self) -> &dyn ValueFormatter {
        static WALL: WallTime = WallTime;
        WALL.formatter()
    }
}

fn bench<M: Measurement>(c: &mut Criterion<M>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    #[cfg(feature = "otel")]
    let telemetry = {
        // SAFETY: set before any thread of this bench reads the environment.
        unsafe { std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", loopback_otlp()) };
        flatmachine_runtime::otel::Telemetry::from_env().unwrap()
    };
    for (name, machine, input) in machines() {
        let mut group = c.benchmark_group(name);
        group.sample_size(30);
        group.bench_function("no_subscriber", |b| {
            b.iter(|| rt.block_on(machine.run(input.clone())).unwrap())
        });
        group.bench_function("stream_consumed", |b| {
            b.iter(|| rt.block_on(streamed(&machine, input.clone())))
        });
        #[cfg(feature = "otel")]
        group.bench_function("otel_exporting", |b| {
            b.iter(|| {
                rt.block_on(telemetry.run(&machine, input.clone(), RunOptions::new()))
                    .unwrap()
            })
        });
        group.finish();
    }
    #[cfg(feature = "otel")]
    telemetry.shutdown().unwrap();
}

criterion_group!(wall_time, bench);
criterion_group! {
    name = cpu_time;
    config = Criterion::default().with_measurement(ThreadCpuTime);
    targets = bench
}

fn main() {
    if std::env::var_os("FLATMACHINE_BENCH_CPU_TIME").is_some_and(|v| v == "1") {
        cpu_time();
    } else {
        wall_time();
    }
    Criterion::default().configure_from_args().final_summary();
}
