// Package wellknown holds the names flashpv shares with Kubernetes and with
// its other binaries: the CSI driver name, the topology key and the
// StorageClass parameters the driver owns. It imports nothing, so any
// program can use it without pulling in the driver.
package wellknown

const (
	// DriverName is the CSI driver name, also the CSIDriver object's name.
	DriverName = "flashpv.dev"
	// TopologyKey carries the node name in volume and node topology.
	TopologyKey = "flashpv.dev/node"
	// ParamPool is the StorageClass parameter that selects a pool.
	ParamPool = "pool"
	// ParamNodeLossPolicy is the StorageClass parameter that says what the
	// cluster controller does with a claim whose node is gone for good. The
	// node plugin records it in the volume context, so it is on the PV.
	ParamNodeLossPolicy = "nodeLossPolicy"
	// NodeLossRecreate: delete the claim (so a StatefulSet recreates it,
	// empty, on a live node) and the PV, never touching any disk.
	NodeLossRecreate = "Recreate"
	// NodeLossReport (the default): delete nothing, report the stuck claim.
	NodeLossReport = "Report"

	// VolumeListConfigMap is the ConfigMap, in flashpv's namespace, in
	// which the cluster controller writes for each node the IDs of the
	// volumes that have a PV there (one key per node name). The DaemonSet
	// mounts it, so a node plugin finds orphaned volumes without calling
	// the Kubernetes API.
	VolumeListConfigMap = "flashpv-volumes"

	// NodeStatusConfigMap is the ConfigMap, in flashpv's namespace, in
	// which the cluster controller writes what each node plugin reports
	// of itself (pools, volumes' used space and health, orphans; one key
	// per node name, pkg/nodestatus), for `kubectl flashpv`.
	NodeStatusConfigMap = "flashpv-status"
)

const (
	// ParamDrainPolicy is the StorageClass parameter that says what the
	// cluster controller does with a volume whose node is cordoned:
	// DrainMove moves it, with its data, to a node where its pod can run;
	// DrainStay (the default) leaves it.
	ParamDrainPolicy = "drainPolicy"
	DrainMove        = "Move"
	DrainStay        = "Stay"
)

const (
	// ParamCrossNode is the StorageClass parameter that lets ("true", the
	// default) or forbids ("false") a restore or clone onto a node other
	// than its source's, which copies the data over the network.
	ParamCrossNode = "crossNode"
)
