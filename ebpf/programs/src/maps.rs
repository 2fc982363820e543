//! The maps shared by the programs. Names and capacities come from
//! `skiff_ebpf_common`, which user space reads too.

use aya_ebpf::bindings::{BPF_F_NO_PREALLOC, BPF_NOEXIST};
use aya_ebpf::macros::map;
use aya_ebpf::maps::{Array, HashMap, LruHashMap, PerCpuHashMap};
use skiff_ebpf_common::mesh::{
    MAX_MESH_PODS, MAX_MESH_REDIRECTS, MeshConfig, MeshDestination, OriginalDstKey,
};
use skiff_ebpf_common::{
    AffinityKey, AffinityValue, Backend, BackendSlotKey, MAX_AFFINITY_BACKENDS,
    MAX_AFFINITY_ENTRIES, MAX_BACKEND_SLOTS, MAX_COUNTERS, MAX_DESTROY_TARGETS,
    MAX_REVERSE_ENTRIES, MAX_SERVICES, ReverseKey, ReverseValue, Service, ServiceBackendKey,
    ServiceKey,
};

// Not preallocated: elements are then freed through RCU, so a value a program is
// reading is never recycled under it by a concurrent update from user space.
#[map(name = "SERVICES")]
pub static SERVICES: HashMap<ServiceKey, Service> =
    HashMap::with_max_entries(MAX_SERVICES, BPF_F_NO_PREALLOC);

#[map(name = "BACKENDS")]
pub static BACKENDS: HashMap<BackendSlotKey, Backend> =
    HashMap::with_max_entries(MAX_BACKEND_SLOTS, BPF_F_NO_PREALLOC);

/// (socket cookie, backend) -> frontend, written at every rewrite; least recently
/// used entries (sockets long closed) make room for new ones.
#[map(name = "REVERSE_SK")]
pub static REVERSE_SK: LruHashMap<ReverseKey, ReverseValue> =
    LruHashMap::with_max_entries(MAX_REVERSE_ENTRIES, 0);

/// (service, client network namespace) -> the client's backend and last connection,
/// for services with session affinity; clients not seen for longest go first.
#[map(name = "AFFINITY")]
pub static AFFINITY: LruHashMap<AffinityKey, AffinityValue> =
    LruHashMap::with_max_entries(MAX_AFFINITY_ENTRIES, 0);

/// The backends of services with session affinity, written by user space: a
/// remembered backend that is no longer here is not used again.
#[map(name = "AFFINITY_BACKENDS")]
pub static AFFINITY_BACKENDS: HashMap<ServiceBackendKey, u8> =
    HashMap::with_max_entries(MAX_AFFINITY_BACKENDS, BPF_F_NO_PREALLOC);

/// Connections (connect rewrites plus sendmsg rewrites) per service backend and CPU.
/// Not preallocated: a preallocated per-CPU map costs entries x CPUs up front.
#[map(name = "LB_COUNTERS")]
pub static LB_COUNTERS: PerCpuHashMap<ServiceBackendKey, u64> =
    PerCpuHashMap::with_max_entries(MAX_COUNTERS, BPF_F_NO_PREALLOC);

/// Backends removed from a service, filled by user space for one destroy pass.
#[map(name = "DESTROY_TARGETS")]
pub static DESTROY_TARGETS: HashMap<ServiceBackendKey, u8> =
    HashMap::with_max_entries(MAX_DESTROY_TARGETS, 0);

/// Enrolled pods' network namespace cookies, written by the agent.
#[map(name = "MESH_PODS")]
pub static MESH_PODS: HashMap<u64, u8> =
    HashMap::with_max_entries(MAX_MESH_PODS, BPF_F_NO_PREALLOC);

/// The node proxy's settings (one entry), written by the agent.
#[map(name = "MESH_CONFIG")]
pub static MESH_CONFIG: Array<MeshConfig> = Array::with_max_entries(1, 0);

/// Socket cookie -> where a captured connect() was going.
#[map(name = "MESH_REDIRECTS")]
pub static MESH_REDIRECTS: LruHashMap<u64, MeshDestination> =
    LruHashMap::with_max_entries(MAX_MESH_REDIRECTS, 0);

/// (namespace, client port, family) -> where a captured connection was going, for
/// the proxy that accepts it.
#[map(name = "MESH_ORIGINAL_DST")]
pub static MESH_ORIGINAL_DST: LruHashMap<OriginalDstKey, MeshDestination> =
    LruHashMap::with_max_entries(MAX_MESH_REDIRECTS, 0);

/// Adds one connection to the counter of `key` on this CPU.
#[inline(always)]
pub fn count(key: &ServiceBackendKey) {
    for _ in 0..2 {
        if let Some(counter) = LB_COUNTERS.get_ptr_mut(key) {
            // SAFETY: a per-CPU value is only written from this CPU, and programs do
            // not migrate while they run.
            unsafe { *counter += 1 };
            return;
        }
        // The first connection creates the counter. If another CPU created it at the
        // same time, NOEXIST fails and the second round increments it. A full map
        // drops the count.
        if LB_COUNTERS.insert(key, &1, u64::from(BPF_NOEXIST)).is_ok() {
            return;
        }
    }
}
