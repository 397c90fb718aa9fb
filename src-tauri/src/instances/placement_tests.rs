use std::time::{Duration, Instant};

use super::*;

const GIB: u64 = 1 << 30;

fn occupant(name: &str, age_s: u64) -> Occupant {
    Occupant {
        name: name.to_owned(),
        group: None,
        footprint: Footprint::default(),
        persistent: false,
        idle: true,
        resident: false,
        // Older `last_used` = used longer ago.
        last_used: Instant::now()
            .checked_sub(Duration::from_secs(age_s))
            .unwrap_or_else(Instant::now),
    }
}

fn ram(o: Occupant, gib: u64) -> Occupant {
    Occupant {
        footprint: Footprint {
            ram_bytes: gib * GIB,
            gpu_bytes: 0,
        },
        ..o
    }
}

fn gpu(o: Occupant, gib: u64) -> Occupant {
    Occupant {
        footprint: Footprint {
            ram_bytes: 0,
            gpu_bytes: gib * GIB,
        },
        ..o
    }
}

fn in_group(o: Occupant, group: &str) -> Occupant {
    Occupant {
        group: Some(group.to_owned()),
        ..o
    }
}

fn busy(o: Occupant) -> Occupant {
    Occupant { idle: false, ..o }
}

fn wanted(footprint: Option<Footprint>) -> Wanted<'static> {
    Wanted {
        name: "new",
        group: None,
        footprint,
        may_displace_resident: false,
    }
}

fn limits() -> Limits {
    Limits {
        eviction: true,
        ..Limits::default()
    }
}

fn memory(ram_gib: u64, gpu_gib: Option<u64>) -> Option<Memory> {
    Some(Memory {
        ram_free: ram_gib * GIB,
        gpu_free: gpu_gib.map(|g| g * GIB),
        unified: false,
    })
}

fn needs_ram(gib: u64) -> Option<Footprint> {
    Some(Footprint {
        ram_bytes: gib * GIB,
        gpu_bytes: 0,
    })
}

fn needs_gpu(gib: u64) -> Option<Footprint> {
    Some(Footprint {
        ram_bytes: 0,
        gpu_bytes: gib * GIB,
    })
}

fn evict(names: &[&str]) -> Plan {
    Plan::Evict(names.iter().map(|n| (*n).to_owned()).collect())
}

#[test]
fn with_no_limit_in_force_a_start_goes_ahead() {
    let running = [occupant("a", 10), occupant("b", 5)];
    assert_eq!(plan(&wanted(None), &running, &limits()), Plan::Go);
}

#[test]
fn at_the_running_limit_the_least_recently_used_idle_instance_goes() {
    let running = [
        occupant("recent", 1),
        occupant("old", 100),
        busy(occupant("oldest", 500)),
    ];
    let limits = Limits {
        max_running: Some(3),
        ..limits()
    };
    assert_eq!(plan(&wanted(None), &running, &limits), evict(&["old"]));
}

#[test]
fn a_busy_instance_is_never_stopped_but_makes_the_start_wait() {
    let running = [busy(occupant("a", 100))];
    let limits = Limits {
        max_running: Some(1),
        ..limits()
    };
    assert!(matches!(
        plan(&wanted(None), &running, &limits),
        Plan::Wait(_)
    ));
}

#[test]
fn persistent_instances_are_never_stopped_so_the_start_is_refused_at_once() {
    let running = [Occupant {
        persistent: true,
        ..occupant("pinned", 100)
    }];
    let limits = Limits {
        max_running: Some(1),
        ..limits()
    };
    let Plan::Refuse(refusal) = plan(&wanted(None), &running, &limits) else {
        panic!("expected a refusal");
    };
    assert_eq!(refusal.limit, Limit::Count(1));
    assert!(
        refusal.message.contains("persistent"),
        "{}",
        refusal.message
    );
}

#[test]
fn without_eviction_a_full_limit_is_refused() {
    let running = [occupant("a", 100)];
    let limits = Limits {
        max_running: Some(1),
        eviction: false,
        ..Limits::default()
    };
    assert!(matches!(
        plan(&wanted(None), &running, &limits),
        Plan::Refuse(_)
    ));
}

#[test]
fn a_resident_instance_goes_last_and_only_for_a_start_that_cannot_wait() {
    let resident = Occupant {
        resident: true,
        ..occupant("just-started", 500)
    };
    let limits = Limits {
        max_running: Some(2),
        ..limits()
    };
    // The resident one is the least recently used, yet the other goes.
    let running = [resident.clone(), occupant("settled", 1)];
    assert_eq!(plan(&wanted(None), &running, &limits), evict(&["settled"]));
    // Alone, it makes the start wait out its residency...
    let running = [resident.clone()];
    let limits = Limits {
        max_running: Some(1),
        ..limits
    };
    assert!(matches!(
        plan(&wanted(None), &running, &limits),
        Plan::Wait(_)
    ));
    // ...unless the start's deadline comes first.
    let hurried = Wanted {
        may_displace_resident: true,
        ..wanted(None)
    };
    assert_eq!(plan(&hurried, &running, &limits), evict(&["just-started"]));
}

#[test]
fn memory_evicts_only_what_frees_the_pool_that_is_short() {
    let running = [
        gpu(occupant("on-gpu", 1), 6),
        ram(occupant("on-cpu", 100), 6),
        gpu(occupant("big-gpu", 50), 8),
    ];
    let limits = Limits {
        memory: memory(4, Some(2)),
        ..limits()
    };
    // 7 GiB of GPU: 2 free; the least recently used GPU user (big-gpu, 8 GiB) is enough; the
    // CPU instance, older still, does not help and stays.
    assert_eq!(
        plan(&wanted(needs_gpu(7)), &running, &limits),
        evict(&["big-gpu"])
    );
    // 3 GiB of RAM fits as it is.
    assert_eq!(plan(&wanted(needs_ram(3)), &running, &limits), Plan::Go);
    // 9 GiB of RAM: the CPU instance goes.
    assert_eq!(
        plan(&wanted(needs_ram(9)), &running, &limits),
        evict(&["on-cpu"])
    );
    // 17 GiB of GPU: everything on the GPU goes, and it still does not fit.
    let Plan::Refuse(refusal) = plan(&wanted(needs_gpu(17)), &running, &limits) else {
        panic!("expected a refusal");
    };
    assert_eq!(refusal.limit, Limit::Memory);
    assert_eq!(
        refusal.message,
        "'new' needs 17 GiB on the GPU, 16 GiB free after stopping 3 other instances: lower gpu_layers or ctx_size"
    );
}

#[test]
fn a_model_that_does_not_fit_even_alone_is_refused_with_the_numbers() {
    let limits = Limits {
        memory: memory(2, None),
        ..limits()
    };
    let Plan::Refuse(refusal) = plan(&wanted(needs_ram(3)), &[], &limits) else {
        panic!("expected a refusal");
    };
    assert_eq!(
        refusal.message,
        "'new' needs 3.0 GiB of RAM, 2.0 GiB free with nothing else to stop: lower ctx_size or use a smaller quantisation"
    );
}

#[test]
fn unified_memory_counts_gpu_and_ram_once() {
    let limits = Limits {
        memory: Some(Memory {
            ram_free: 10 * GIB,
            gpu_free: Some(10 * GIB),
            unified: true,
        }),
        ..limits()
    };
    let both = Some(Footprint {
        ram_bytes: 6 * GIB,
        gpu_bytes: 6 * GIB,
    });
    // 12 GiB in all against 10: not 6 of 10 twice. A GPU user frees unified memory too.
    let running = [gpu(occupant("metal", 5), 4)];
    assert_eq!(plan(&wanted(both), &running, &limits), evict(&["metal"]));
    assert!(matches!(plan(&wanted(both), &[], &limits), Plan::Refuse(_)));
}

#[test]
fn memory_is_not_considered_for_an_unknown_footprint() {
    let limits = Limits {
        memory: memory(0, None),
        ..limits()
    };
    assert_eq!(plan(&wanted(None), &[occupant("a", 1)], &limits), Plan::Go);
}

#[test]
fn a_group_at_its_limit_stops_one_of_its_own_not_another_instance() {
    let running = [
        occupant("outsider", 1000),
        in_group(occupant("member-old", 100), "code"),
        in_group(occupant("member-new", 1), "code"),
    ];
    let limits = Limits {
        group_limit: Some(2),
        ..limits()
    };
    let member = Wanted {
        group: Some("code"),
        ..wanted(None)
    };
    assert_eq!(plan(&member, &running, &limits), evict(&["member-old"]));
    // Outside the group, its limit does not apply.
    assert_eq!(plan(&wanted(None), &running, &limits), Plan::Go);
}

#[test]
fn group_then_global_limit_evict_hierarchically() {
    // llamactl's order: first the group's own LRU at its quota, then the global LRU.
    let running = [
        occupant("outsider", 1000),
        in_group(occupant("member", 1), "code"),
    ];
    let limits = Limits {
        group_limit: Some(1),
        max_running: Some(1),
        ..limits()
    };
    let member = Wanted {
        group: Some("code"),
        ..wanted(None)
    };
    assert_eq!(
        plan(&member, &running, &limits),
        evict(&["member", "outsider"])
    );
}

#[test]
fn an_exclusive_group_stops_all_its_other_members_and_waits_for_busy_ones() {
    let limits = Limits {
        exclusive: true,
        // Even with eviction off: exclusivity asks for those stops.
        eviction: false,
        ..Limits::default()
    };
    let member = Wanted {
        group: Some("gpu"),
        ..wanted(None)
    };
    let running = [
        in_group(occupant("a", 1), "gpu"),
        in_group(occupant("b", 2), "gpu"),
        occupant("outsider", 3),
    ];
    assert_eq!(plan(&member, &running, &limits), evict(&["a", "b"]));
    let running = [in_group(busy(occupant("a", 1)), "gpu")];
    assert!(matches!(plan(&member, &running, &limits), Plan::Wait(_)));
    let running = [Occupant {
        persistent: true,
        ..in_group(occupant("a", 1), "gpu")
    }];
    assert!(matches!(plan(&member, &running, &limits), Plan::Refuse(_)));
}
