//! `zos node drain` and `zos node undrain` with the real `zos` binary on a `dir://`
//! notary: the farmer's signed record at `grid/<farm>/drains/<node>`, which the
//! orchestrator believes from the farm's farmer only (crates/zos-grid/tests/bot.rs).
//! The CLI refuses, and writes nothing, when the key is not the farmer's (the attack: a
//! tenant draining a node to pull replicas off it) or the node is not in the farm.

mod common;

use common::{ok, refused};

use zos_contract::{PublicKey, SecretKey};
use zos_grid::Drain;
use zos_notary::{Notary, NotaryKey, Record};
use zos_registry::{Dmi, Farm, NodeResources, Registration};

struct Notaries {
    rt: tokio::runtime::Runtime,
    notary: zos_notary::AnyNotary,
}

impl Notaries {
    fn put(&self, r: &Record) {
        self.rt.block_on(self.notary.put(r)).unwrap();
    }
    fn get(&self, k: &NotaryKey) -> Option<Record> {
        self.rt.block_on(self.notary.get(k)).unwrap()
    }
}

fn register(n: &Notaries, node: &SecretKey, farm: &str) {
    let reg = Registration {
        farm: farm.into(),
        version: "0.1.0".into(),
        capacity: NodeResources {
            cpus: 4,
            memory_bytes: 8 << 30,
            ssd_bytes: 100 << 30,
            hdd_bytes: 0,
        },
        offered: None,
        nics: vec![],
        dmi: Dmi::default(),
        registered_at: zos_registry::now(),
    };
    n.put(&reg.sign(node, zos_registry::now()).unwrap());
}

#[test]
fn drain_and_undrain_are_the_farmer_s_and_refused_for_anyone_else() {
    let tmp = zos_testkit::tempdir("cli-drain");
    let dir = tmp.path();
    let store = dir.join("notary");
    std::fs::create_dir_all(&store).unwrap();
    let url = format!("dir://{}", store.display());
    let url = url.as_str();
    let farmer: PublicKey = ok(dir, &["key", "new", "--out", "farmer.key"])
        .trim()
        .parse()
        .unwrap();
    ok(dir, &["key", "new", "--out", "tenant.key"]);
    ok(
        dir,
        &[
            "farm",
            "create",
            "farm-1",
            "--name",
            "rack",
            "--key",
            "farmer.key",
            "--notary",
            url,
        ],
    );
    let n = Notaries {
        rt: tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap(),
        notary: zos_notary::open(url).unwrap(),
    };
    let node = SecretKey::from_seed([21; 32]);
    let elsewhere = SecretKey::from_seed([22; 32]);
    register(&n, &node, "farm-1");
    register(&n, &elsewhere, "farm-2");
    let hex = node.public().to_string();
    let key = NotaryKey::drain("farm-1", &node.public()).unwrap();
    let node_args = |verb: &'static str, who: &'static str, hex: String| {
        vec![
            "node".to_string(),
            verb.into(),
            hex,
            "--farm".into(),
            "farm-1".into(),
            "--key".into(),
            who.into(),
            "--notary".into(),
            url.to_string(),
        ]
    };
    let run = |args: Vec<String>, expect_ok: bool| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        if expect_ok {
            ok(dir, &args)
        } else {
            refused(dir, &args)
        }
    };

    // The attack: a tenant drains (or undrains) the node. Refused, nothing written.
    for verb in ["drain", "undrain"] {
        let out = run(node_args(verb, "tenant.key", hex.clone()), false);
        assert!(
            out.contains("is not the farmer of farm \"farm-1\"")
                && out.contains(&farmer.to_string())
                && out.contains("nothing written"),
            "{out}"
        );
        assert_eq!(n.get(&key), None, "{verb}: nothing written");
    }
    // A node of another farm: refused, nothing written.
    let other = run(
        node_args("drain", "farmer.key", elsewhere.public().to_string()),
        false,
    );
    assert!(
        other.contains("not registered in farm \"farm-1\"") && other.contains("farm-2"),
        "{other}"
    );
    assert_eq!(
        n.get(&NotaryKey::drain("farm-1", &elsewhere.public()).unwrap()),
        None
    );

    // The farmer drains: the record is the farmer's word, as the orchestrator reads it.
    let out = run(node_args("drain", "farmer.key", hex.clone()), true);
    assert!(out.starts_with("drained node"), "{out}");
    let farm_record = n.get(&NotaryKey::farm("farm-1").unwrap()).unwrap();
    let farm = Farm::from_record(&farm_record).unwrap();
    let record = n.get(&key).expect("the drain record");
    assert_eq!(record.author, farmer);
    assert_eq!(
        Drain::from_record(&record, &farm).unwrap(),
        (node.public(), Drain { drained: true })
    );
    // A tenant's undrain is refused and leaves the farmer's drain in place.
    run(node_args("undrain", "tenant.key", hex.clone()), false);
    assert_eq!(n.get(&key), Some(record));
    // The farmer undrains: a signed record saying so.
    let out = run(node_args("undrain", "farmer.key", hex.clone()), true);
    assert!(out.starts_with("undrained node"), "{out}");
    let record = n.get(&key).unwrap();
    assert_eq!(
        Drain::from_record(&record, &farm).unwrap(),
        (node.public(), Drain { drained: false })
    );
}
