//! Remote-write against a real Prometheus (Debian's `prometheus`, receiver enabled):
//! what is pushed is queried back. Every test labels its series with a `zt-` tag of its
//! own, so tests sharing one Prometheus do not see each other's series.

mod support;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use zos_metrics::collect::{Cgroup, NodeCpu, NodeMemory, NodeNetwork, Pools};
use zos_metrics::proto::{Sample, TimeSeries};
use zos_metrics::{
    CgroupLayout, Client, PushConfig, PushError, Pusher, Registry, RegistryError, Target, Tenants,
};
use zos_testkit::Needs;

use support::{Prometheus, WAIT};

fn needs_prometheus(test: &str) -> bool {
    Needs::none()
        .bin_from("prometheus", "prometheus")
        .check(test)
}

/// Pushes only when asked (the interval is an hour), retries quickly.
fn on_demand() -> PushConfig {
    PushConfig {
        interval: Duration::from_secs(3600),
        backoff_min: Duration::from_millis(50),
        backoff_max: Duration::from_millis(200),
        ..PushConfig::default()
    }
}

fn pusher(to: &Prometheus, r: &Registry) -> Pusher {
    Pusher::spawn(&Target::new(to.write_url()), r.clone(), on_demand()).unwrap()
}

/// Labels of a queried series, `__name__` included, as sorted pairs.
fn labels(m: &serde_json::Map<String, serde_json::Value>) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = m
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect();
    v.sort();
    v
}

fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = p
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn counters_gauges_and_a_histogram_round_trip_with_their_labels_and_values() {
    if !needs_prometheus("counters_gauges_and_a_histogram_round_trip") {
        return;
    }
    let prom = support::shared().farm;
    let run = zos_testkit::tag(4);
    let r = Registry::with_labels(&[("run", &run)]).unwrap();
    let jobs = r.counter("zt_jobs_total", &[("kind", "vm")]).unwrap();
    jobs.inc();
    jobs.inc_by(2.0);
    r.counter("zt_jobs_total", &[("kind", "container")])
        .unwrap()
        .inc();
    r.gauge("zt_queue_depth", &[]).unwrap().set(-2.5);
    let lat = r
        .histogram("zt_op_seconds", &[("op", "deploy")], &[0.5, 2.0])
        .unwrap();
    lat.observe(0.25);
    lat.observe(1.0);
    lat.observe(8.0);
    let p = pusher(prom, &r);
    p.push_now().await.unwrap();

    let sel = |name: &str, extra: &str| format!("{name}{{run=\"{run}\"{extra}}}");
    let vm = prom
        .wait_for(&sel("zt_jobs_total", ",kind=\"vm\""), |r| !r.is_empty())
        .await;
    assert_eq!(vm.len(), 1);
    assert_eq!(vm[0].1, [3.0]);
    // Exactly the labels given: the name, the series' own and the registry's constant.
    assert_eq!(
        labels(&vm[0].0),
        pairs(&[("__name__", "zt_jobs_total"), ("kind", "vm"), ("run", &run)])
    );
    assert_eq!(
        prom.value(&sel("zt_jobs_total", ",kind=\"container\""))
            .await,
        1.0
    );
    assert_eq!(prom.value(&sel("zt_queue_depth", "")).await, -2.5);
    let bucket = |le: &str| sel("zt_op_seconds_bucket", &format!(",le=\"{le}\""));
    assert_eq!(prom.value(&bucket("0.5")).await, 1.0);
    assert_eq!(prom.value(&bucket("2")).await, 2.0);
    assert_eq!(prom.value(&bucket("+Inf")).await, 3.0);
    assert_eq!(prom.value(&sel("zt_op_seconds_sum", "")).await, 9.25);
    assert_eq!(prom.value(&sel("zt_op_seconds_count", "")).await, 3.0);
    // The pusher's own series went along, and say nothing was lost.
    assert_eq!(
        prom.value(&sel("zos_metrics_dropped_samples_total", ""))
            .await,
        0.0
    );
    assert_eq!(p.stats().pushed_batches, 1);
    assert_eq!(p.stats().dropped_samples, 0);

    // A later push carries the new value.
    jobs.inc();
    p.push_now().await.unwrap();
    prom.wait_for(&sel("zt_jobs_total", ",kind=\"vm\""), |r| {
        r.len() == 1 && r[0].1 == [4.0]
    })
    .await;
}

#[tokio::test]
async fn node_collectors_produce_plausible_series() {
    if !needs_prometheus("node_collectors_produce_plausible_series") {
        return;
    }
    let prom = support::shared().farm;
    let run = zos_testkit::tag(4);
    let r = Registry::with_labels(&[("run", &run)]).unwrap();
    let pool_dir = zos_testkit::tempdir("pool");
    let pool_path = pool_dir.path().to_path_buf();
    r.set_collector("cpu", Box::new(NodeCpu::default()));
    r.set_collector("memory", Box::new(NodeMemory::default()));
    r.set_collector("network", Box::new(NodeNetwork::default()));
    r.set_collector(
        "pools",
        Box::new(Pools(move || {
            vec![("zt-ssd".to_string(), pool_path.clone())]
        })),
    );
    let p = pusher(prom, &r);
    // Talking to Prometheus over loopback is what makes lo's counters move.
    p.push_now().await.unwrap();

    let cpu = prom
        .wait_for(&format!("node_cpu_seconds_total{{run=\"{run}\"}}"), |r| {
            !r.is_empty()
        })
        .await;
    let cpus = std::thread::available_parallelism().unwrap().get();
    // Eight modes per CPU the process may run on (at least).
    assert!(cpu.len() >= 8 * cpus, "{cpu:?}");
    let total: f64 = cpu.iter().map(|(_, v)| v[0]).sum();
    assert!(total > 0.0, "cpu seconds: {total}");
    assert!(cpu.iter().any(|(l, _)| l["mode"] == "idle"));

    let mem_kib: f64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .unwrap()
        .trim()
        .trim_end_matches(" kB")
        .trim()
        .parse()
        .unwrap();
    let mem = prom
        .value(&format!("node_memory_MemTotal_bytes{{run=\"{run}\"}}"))
        .await;
    assert_eq!(mem, mem_kib * 1024.0);
    assert!(mem > 0.0);
    let avail = prom
        .value(&format!("node_memory_MemAvailable_bytes{{run=\"{run}\"}}"))
        .await;
    assert!(avail > 0.0 && avail <= mem, "{avail} of {mem}");

    let lo = prom
        .value(&format!(
            "node_network_receive_bytes_total{{run=\"{run}\",device=\"lo\"}}"
        ))
        .await;
    assert!(lo > 0.0, "lo received {lo} bytes");
    prom.value(&format!(
        "node_network_transmit_packets_total{{run=\"{run}\",device=\"lo\"}}"
    ))
    .await;

    let st = nix::sys::statvfs::statvfs(pool_dir.path()).unwrap();
    let size = prom
        .value(&format!(
            "zos_pool_size_bytes{{run=\"{run}\",pool=\"zt-ssd\"}}"
        ))
        .await;
    assert_eq!(size, st.blocks() as f64 * st.fragment_size() as f64);
    let used = prom
        .value(&format!(
            "zos_pool_used_bytes{{run=\"{run}\",pool=\"zt-ssd\"}}"
        ))
        .await;
    assert!(used > 0.0 && used <= size, "{used} of {size}");
}

/// A child process in the test's cgroups, burning CPU and holding 16 MiB: killed, and
/// the cgroups removed, on drop (success or failure).
struct CgroupGuard {
    name: String,
    dirs: Vec<PathBuf>,
    child: Option<Child>,
}

impl Drop for CgroupGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for d in self.dirs.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
        zos_testkit::remove_cgroup(&self.name);
    }
}

const HELD: f64 = 16.0 * 1024.0 * 1024.0;

#[tokio::test]
async fn a_cgroup_collector_reads_a_zt_cgroup_the_test_made_on_v1_and_v2() {
    let test = "a_cgroup_collector_reads_a_zt_cgroup";
    let root = PathBuf::from("/sys/fs/cgroup");
    let pure_v2 = root.join("cgroup.controllers").exists();
    let v1_cpu = ["cpuacct", "cpu,cpuacct"]
        .iter()
        .map(|h| root.join(h))
        .find(|p| p.join("cpuacct.usage").exists());
    // v2: the root on a v2 node, the unified mount on a hybrid one.
    let v2_root = if pure_v2 {
        Some(root.clone())
    } else {
        Some(root.join("unified")).filter(|p| p.join("cgroup.procs").exists())
    };
    let ok = Needs::root()
        .bin_from("prometheus", "prometheus")
        .bin("dd")
        .that(
            pure_v2 || (v1_cpu.is_some() && root.join("memory").exists()),
            "a cgroup v1 cpuacct and memory hierarchy, or cgroup v2",
        )
        .check(test);
    if !ok {
        return;
    }
    let prom = support::shared().farm;
    let name = zos_testkit::tag(4);
    let mut guard = CgroupGuard {
        name: name.clone(),
        dirs: Vec::new(),
        child: None,
    };
    let mut layouts = Vec::new();
    if !pure_v2 {
        let cpu = v1_cpu.clone().unwrap();
        for h in [cpu, root.join("memory")] {
            std::fs::create_dir(h.join(&name)).unwrap();
            guard.dirs.push(h.join(&name));
        }
        layouts.push(("v1", CgroupLayout::V1 { root: root.clone() }));
    }
    if let Some(v2) = &v2_root {
        if pure_v2 {
            // Let the child have the memory controller, where the root delegates it.
            let _ = std::fs::write(v2.join("cgroup.subtree_control"), "+memory +cpu");
        }
        std::fs::create_dir(v2.join(&name)).unwrap();
        guard.dirs.push(v2.join(&name));
        layouts.push(("v2", CgroupLayout::V2 { root: v2.clone() }));
    }
    // The shell moves itself into every one of them, then becomes dd: a 16 MiB buffer
    // (touched by every read) and CPU time, both charged to the test's cgroups.
    let procs: Vec<PathBuf> = guard.dirs.iter().map(|d| d.join("cgroup.procs")).collect();
    let child = Command::new("sh")
        .arg("-c")
        .arg(r#"for f in "$@"; do echo $$ > "$f" || exit 1; done; exec dd if=/dev/zero of=/dev/null bs=16M"#)
        .arg("sh")
        .args(&procs)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id().to_string();
    guard.child = Some(child);

    // Wait until the kernel has charged it: dd in every cgroup, CPU time and the buffer.
    let collectors: Vec<(&str, Cgroup)> = layouts
        .iter()
        .map(|(v, l)| (*v, Cgroup::new(l.clone(), &name, &[("workload", v)])))
        .collect();
    let deadline = Instant::now() + WAIT;
    loop {
        let joined = procs.iter().all(|p| {
            std::fs::read_to_string(p)
                .unwrap_or_default()
                .lines()
                .any(|l| l == pid)
        });
        let charged = collectors.iter().all(|(_, c)| {
            c.read()
                .is_ok_and(|u| u.cpu_seconds > 0.0 && u.memory_bytes.is_none_or(|m| m >= HELD))
        });
        if joined && charged {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "dd not charged to {name} in {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let run = zos_testkit::tag(4);
    let r = Registry::with_labels(&[("run", &run)]).unwrap();
    let mut memory_expected = Vec::new();
    for (v, c) in &collectors {
        memory_expected.push((*v, c.read().unwrap().memory_bytes.is_some()));
        r.set_collector(v, Box::new(c.clone()));
    }
    let p = pusher(prom, &r);
    p.push_now().await.unwrap();

    for (v, has_memory) in memory_expected {
        let sel = |m: &str| format!("{m}{{run=\"{run}\",workload=\"{v}\"}}");
        let cpu = prom.value(&sel("zos_workload_cpu_seconds_total")).await;
        assert!(cpu > 0.0, "{v}: cpu {cpu}");
        if has_memory {
            let mem = prom.value(&sel("zos_workload_memory_bytes")).await;
            assert!(mem >= HELD, "{v}: memory {mem}");
        } else {
            // A hybrid host's v2 has no memory controller: no series, not a zero. The
            // cpu series above, pushed in the same batch, is the positive marker.
            assert!(prom
                .query(&sel("zos_workload_memory_bytes"))
                .await
                .is_empty());
        }
    }
    if layouts.len() < 2 {
        zos_testkit::skip_line(test, "only one cgroup version on this host");
    }
    drop(guard);
    assert!(!PathBuf::from("/sys/fs/cgroup/memory").join(&name).exists());
}

#[tokio::test]
async fn a_tenants_series_carry_only_its_labels_and_reach_only_its_target() {
    if !needs_prometheus("a_tenants_series_reach_only_its_target") {
        return;
    }
    let shared = support::shared();
    // The farm's Prometheus is contract a's target here; the other is only b's.
    let (to_a, to_b) = (shared.farm, shared.tenant);
    let a = zos_testkit::tag(4);
    let b = zos_testkit::tag(4);
    let ra = Registry::with_labels(&[("contract", &a)]).unwrap();
    let rb = Registry::with_labels(&[("contract", &b)]).unwrap();
    // A tenant's registry cannot speak for another tenant.
    assert!(matches!(
        ra.gauge("zt_marker", &[("contract", &b)]),
        Err(RegistryError::ConstantLabel(_))
    ));
    let pa = pusher(to_a, &ra);
    let pb = pusher(to_b, &rb);
    ra.gauge("zt_tenant_cpu", &[("workload", "w1")])
        .unwrap()
        .set(1.0);
    rb.gauge("zt_tenant_cpu", &[("workload", "w1")])
        .unwrap()
        .set(2.0);
    pb.push_now().await.unwrap();
    pa.push_now().await.unwrap();
    // Positive markers, pushed after everything else of both tenants.
    ra.gauge("zt_marker", &[]).unwrap().set(1.0);
    rb.gauge("zt_marker", &[]).unwrap().set(1.0);
    pb.push_now().await.unwrap();
    pa.push_now().await.unwrap();
    to_a.value(&format!("zt_marker{{contract=\"{a}\"}}")).await;
    to_b.value(&format!("zt_marker{{contract=\"{b}\"}}")).await;

    // Each target has its tenant's series, with its values...
    assert_eq!(
        to_a.value(&format!("zt_tenant_cpu{{contract=\"{a}\"}}"))
            .await,
        1.0
    );
    assert_eq!(
        to_b.value(&format!("zt_tenant_cpu{{contract=\"{b}\"}}"))
            .await,
        2.0
    );
    // ...and nothing of the other's.
    assert!(to_a
        .query(&format!("{{contract=\"{b}\"}}"))
        .await
        .is_empty());
    assert!(to_b
        .query(&format!("{{contract=\"{a}\"}}"))
        .await
        .is_empty());
    // Every series b's target holds carries b's contract label and nothing foreign
    // (only this test pushes there).
    let all_b = to_b.query("{__name__=~\".+\"}").await;
    assert!(!all_b.is_empty());
    for (l, _) in &all_b {
        assert_eq!(l["contract"], b.as_str(), "{l:?}");
        let names: Vec<&str> = l.keys().map(String::as_str).collect();
        assert!(
            names
                .iter()
                .all(|n| ["__name__", "contract", "workload"].contains(n)),
            "{names:?}"
        );
    }
}

#[tokio::test]
async fn a_target_that_is_down_gets_the_queued_batches_in_order_and_overflow_is_counted() {
    let test = "a_target_that_is_down_gets_the_queued_batches";
    if !needs_prometheus(test) {
        return;
    }
    let port = support::free_port();
    let url: reqwest::Url = format!("http://127.0.0.1:{port}/api/v1/write")
        .parse()
        .unwrap();
    let run = zos_testkit::tag(4);
    let r = Registry::with_labels(&[("run", &run)]).unwrap();
    let g = r.gauge("zt_outage", &[]).unwrap();
    // Four samples a batch (the gauge and the pusher's three): room for two batches.
    let config = PushConfig {
        max_queued_samples: 8,
        ..on_demand()
    };
    let p = Pusher::spawn(&Target::new(url), r.clone(), config).unwrap();
    for v in [1.0, 2.0, 3.0] {
        g.set(v);
        let err = p.push_now().await.unwrap_err();
        assert!(matches!(err, PushError::Transport(_)), "{err}");
    }
    let s = p.stats();
    assert_eq!(s.pushed_batches, 0);
    assert_eq!(
        s.dropped_samples, 4,
        "the first batch was pushed out: {s:?}"
    );
    assert_eq!(s.queued_samples, 8);
    assert!(s.failures >= 3);

    // The target comes up on that port: the pusher's own retry delivers the queue.
    let dir = support::fresh_dir("outage");
    let prom = Prometheus::start_at(&dir, port, false).unwrap();
    let deadline = Instant::now() + WAIT;
    while p.stats().queued_samples > 0 {
        assert!(
            Instant::now() < deadline,
            "queue not delivered: {:?}",
            p.stats()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let s = p.stats();
    assert_eq!(s.pushed_batches, 2);
    assert_eq!(s.dropped_samples, 4);
    // Both queued batches, oldest first; the dropped one is not there.
    let got = prom
        .wait_for(&format!("zt_outage{{run=\"{run}\"}}[1h]"), |r| {
            r.first().is_some_and(|(_, v)| v.len() >= 2)
        })
        .await;
    assert_eq!(got[0].1, [2.0, 3.0]);
    // The drop was counted after the third snapshot was taken: the next push tells
    // the target what it missed.
    p.push_now().await.unwrap();
    prom.wait_for(
        &format!("zos_metrics_dropped_samples_total{{run=\"{run}\"}}"),
        |r| r.len() == 1 && r[0].1 == [4.0],
    )
    .await;
}

#[tokio::test]
async fn a_refused_batch_is_dropped_and_counted_not_retried() {
    if !needs_prometheus("a_refused_batch_is_dropped_and_counted") {
        return;
    }
    let prom = support::shared().farm;
    let run = zos_testkit::tag(4);

    // A real refusal from the receiver: a sample older than the series' last.
    let client = Client::new(&Target::new(prom.write_url())).unwrap();
    let at = |ms: i64| {
        TimeSeries::new(
            "zt_refused",
            [("run", run.as_str())],
            Sample {
                value: 1.0,
                timestamp_ms: ms,
            },
        )
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    client.push(&[at(now)]).await.unwrap();
    let err = client.push(&[at(now - 60_000)]).await.unwrap_err();
    assert!(
        matches!(err, PushError::Rejected { status: 400, .. }),
        "{err}"
    );
    assert!(err.is_permanent());

    // A pusher whose target answers 404: the batch is dropped at once and counted.
    let r = Registry::with_labels(&[("run", &run)]).unwrap();
    r.gauge("zt_lost", &[]).unwrap().set(1.0);
    let p = Pusher::spawn(&Target::new(prom.wrong_url()), r, on_demand()).unwrap();
    let err = p.push_now().await.unwrap_err();
    assert!(
        matches!(err, PushError::Rejected { status: 404, .. }),
        "{err}"
    );
    let s = p.stats();
    assert_eq!(s.dropped_samples, 4);
    assert_eq!(s.queued_samples, 0);
    assert_eq!(s.failures, 1);
    assert!(prom
        .query(&format!("zt_lost{{run=\"{run}\"}}"))
        .await
        .is_empty());
}

#[tokio::test]
async fn a_contract_rebound_to_another_target_stops_reaching_the_old_one() {
    if !needs_prometheus("a_contract_rebound_to_another_target") {
        return;
    }
    let old = support::shared().farm;
    // Only this test pushes to this one.
    let new = support::start_fresh("rebound", false).unwrap();
    let tenants = Tenants::new(on_demand());
    let c = zos_testkit::tag(4);
    let marker = zos_testkit::tag(4);
    let r = tenants.registry(&c).unwrap();
    let step = r.gauge("zt_step", &[]).unwrap();
    step.set(1.0);
    tenants
        .set_target(&c, Some(&Target::new(old.write_url())))
        .unwrap();
    tenants.push_now(&c).await.unwrap();
    assert_eq!(
        old.value(&format!("zt_step{{contract=\"{c}\"}}")).await,
        1.0
    );

    // The contract now names the other target.
    tenants
        .set_target(&c, Some(&Target::new(new.write_url())))
        .unwrap();
    step.set(2.0);
    tenants.push_now(&c).await.unwrap();
    assert_eq!(
        new.value(&format!("zt_step{{contract=\"{c}\"}}")).await,
        2.0
    );
    // A positive marker on the old target, pushed after step 2 was accepted by the
    // new one: the old target has it and still only step 1.
    let m = Registry::with_labels(&[("run", &marker)]).unwrap();
    m.gauge("zt_marker", &[]).unwrap().set(1.0);
    pusher(old, &m).push_now().await.unwrap();
    old.value(&format!("zt_marker{{run=\"{marker}\"}}")).await;
    let on_old = old.query(&format!("zt_step{{contract=\"{c}\"}}[1h]")).await;
    assert_eq!(on_old.len(), 1);
    assert_eq!(on_old[0].1, [1.0]);
    // Nothing of the contract's reached the new target before it was named.
    let on_new = new.query(&format!("zt_step{{contract=\"{c}\"}}[1h]")).await;
    assert_eq!(on_new[0].1, [2.0]);

    // No target: nothing leaves for it any more.
    tenants.set_target(&c, None).unwrap();
    assert!(matches!(
        tenants.push_now(&c).await,
        Err(PushError::Stopped)
    ));
}

#[tokio::test]
async fn an_https_target_is_trusted_only_through_its_pinned_ca() {
    let test = "an_https_target_is_trusted_only_through_its_pinned_ca";
    if !Needs::none()
        .bin_from("prometheus", "prometheus")
        .bin_from("openssl", "openssl")
        .check(test)
    {
        return;
    }
    let pki = zos_testkit::tempdir("metrics-pki");
    support::make_ca(pki.path(), "farm");
    let stranger = support::make_ca(pki.path(), "stranger");
    let tls = support::make_server_cert(pki.path(), "farm");
    let prom = Prometheus::start_with(
        &support::fresh_dir("tls"),
        support::free_port(),
        false,
        Some(&tls),
    )
    .unwrap();
    assert!(prom.write_url().as_str().starts_with("https://"));
    let run = zos_testkit::tag(4);
    let r = Registry::with_labels(&[("run", &run)]).unwrap();
    r.gauge("zt_tls", &[]).unwrap().set(1.0);
    let target = |ca: Option<&[u8]>| Target {
        ca_pem: ca.map(<[u8]>::to_vec),
        ..Target::new(prom.write_url())
    };

    // Another CA, or none (no system roots are trusted): the handshake fails.
    for (what, ca) in [("a stranger's CA", Some(&stranger[..])), ("no CA", None)] {
        let p = Pusher::spawn(&target(ca), r.clone(), on_demand()).unwrap();
        let err = p.push_now().await.unwrap_err();
        assert!(matches!(err, PushError::Transport(_)), "{what}: {err}");
        assert!(!err.is_permanent());
        assert_eq!(p.stats().pushed_batches, 0, "{what}");
    }

    // The pinned CA: accepted, and the earlier attempts left nothing behind.
    let p = Pusher::spawn(&target(Some(&tls.ca_pem)), r.clone(), on_demand()).unwrap();
    p.push_now().await.unwrap();
    let got = prom
        .wait_for(&format!("zt_tls{{run=\"{run}\"}}[1h]"), |r| !r.is_empty())
        .await;
    assert_eq!(
        got[0].1.len(),
        1,
        "only the pinned pusher's sample: {got:?}"
    );
}
