#!/usr/bin/env bash
# Starts a real Kubernetes on this machine with NODES kubelet nodes (default
# 1), all as processes of this harness, in namespaces (lib.sh):
#   cp      netns, 10.77.0.10: etcd, kube-apiserver, controller-manager, scheduler
#   node-N  netns + mount ns + UTS ns, 10.77.0.(10+N): containerd, kubelet,
#           kube-proxy; pods in 10.78.N.0/24; its own pool filesystem
#           (POOL_SIZES) mounted at /var/lib/flashpv inside the node only
# joined by the bridge flashpv0 (10.77.0.1). Idempotent: what runs is left
# alone. down.sh undoes everything, also after a failed or interrupted run.
source "$(dirname "$0")/lib.sh"
[ "$(id -u)" = 0 ] || die "run as root"
HERE=$(cd "$(dirname "$0")" && pwd)
"$HERE/install-deps.sh"
if [ -f "$STATE/nodes" ] && [ "$(wc -l <"$STATE/nodes")" != "$NODES" ]; then
	die "the cluster that is up has $(wc -l <"$STATE/nodes") node(s), not NODES=$NODES: make cluster-down first"
fi
mkdir -p "$STATE"
trap 'rc=$?; [ $rc = 0 ] || "$HERE/logs.sh" "up.sh failed"; exit $rc' EXIT

# What this machine looked like, recorded once, before the harness changes
# anything, and never overwritten by a later bring-up (down.sh restores it
# and only then removes it): the kernel settings the kubelets change (they
# are global, not per namespace), br_netfilter, cgroup v2's root controllers.
if [ ! -f "$STATE/machine.saved" ]; then
	{
		for k in vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops \
			kernel.keys.root_maxkeys kernel.keys.root_maxbytes; do
			echo "sysctl $k $(sysctl -n "$k")"
		done
		if [ -r /proc/modules ]; then
			grep -q '^br_netfilter ' /proc/modules && echo "module br_netfilter loaded" || echo "module br_netfilter absent"
		fi
		if [ "$(stat -fc %T /sys/fs/cgroup)" = cgroup2fs ]; then
			echo "subtree_control /sys/fs/cgroup $(tr ' ' , </sys/fs/cgroup/cgroup.subtree_control)"
		fi
	} >"$STATE/machine.saved.tmp"
	mv "$STATE/machine.saved.tmp" "$STATE/machine.saved"
fi
seq -f "node-%g" 1 "$NODES" >"$STATE/nodes"

"$HERE/build.sh"
"$HERE/pki.sh"
"$HERE/images.sh"
P=$STATE/pki
T0=$SECONDS

# Pod traffic between a node's pods and its Services (hairpin) goes through
# iptables on the node's own bridge.
modprobe br_netfilter 2>/dev/null || true
if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
	ip link add "$BRIDGE" type bridge
	ip addr add "$BRIDGE_IP/24" dev "$BRIDGE"
	ip link set "$BRIDGE" up
fi

# ---- control plane
make_machine cp --net
mkdir -p "$STATE/cp/etcd"
start_on cp etcd etcd --name flashpv-local --data-dir "$STATE/cp/etcd" \
	--listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
	--listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
	--initial-cluster flashpv-local=http://127.0.0.1:2380 --listen-metrics-urls http://127.0.0.1:2381
wait_for 60 etcd on cp curl -sf http://127.0.0.1:2381/health
start_on cp kube-apiserver kube-apiserver \
	--etcd-servers=http://127.0.0.1:2379 \
	--advertise-address="$CP_IP" --bind-address=0.0.0.0 --secure-port=6443 \
	--tls-cert-file="$P/apiserver.crt" --tls-private-key-file="$P/apiserver.key" \
	--client-ca-file="$P/ca.crt" \
	--kubelet-client-certificate="$P/apiserver-kubelet-client.crt" --kubelet-client-key="$P/apiserver-kubelet-client.key" \
	--kubelet-certificate-authority="$P/ca.crt" --kubelet-preferred-address-types=InternalIP \
	--service-account-key-file="$P/sa.pub" --service-account-signing-key-file="$P/sa.key" \
	--service-account-issuer=https://kubernetes.default.svc.cluster.local \
	--service-cluster-ip-range="$SERVICE_CIDR" \
	--authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
	--allow-privileged=true --feature-gates=MutablePVNodeAffinity=true,CSIVolumeHealth=true
# The controller manager exits when started before the RBAC bootstrap is done.
wait_for 120 kube-apiserver kubectl get --raw /readyz
for c in controller-manager scheduler; do
	kc=$STATE/kc/$c.kubeconfig extra=()
	[ $c = scheduler ] || extra=(--service-account-private-key-file="$P/sa.key" --root-ca-file="$P/ca.crt"
		--cluster-signing-cert-file="$P/ca.crt" --cluster-signing-key-file="$P/ca.key"
		--use-service-account-credentials=true --service-cluster-ip-range="$SERVICE_CIDR")
	if [ $c = controller-manager ] && [ -n "$CONTROLLER_MANAGER_QPS" ]; then
		extra+=(--kube-api-qps="${CONTROLLER_MANAGER_QPS%/*}" --kube-api-burst="${CONTROLLER_MANAGER_QPS#*/}")
	fi
	start_on cp "kube-$c" "kube-$c" --kubeconfig="$kc" --authentication-kubeconfig="$kc" \
		--authorization-kubeconfig="$kc" --bind-address=127.0.0.1 --leader-elect=false "${extra[@]}"
done
log "control plane up at https://$CP_IP:6443 ($((SECONDS - T0))s)"

# ---- nodes
v2=false
[ "$(stat -fc %T /sys/fs/cgroup)" = cgroup2fs ] && v2=true
for n in $(node_names); do
	D=$STATE/$n
	make_machine "$n" --net --mount --uts --propagation private
	# The node's name is its hostname (the kubelet's node name and the
	# kubernetes.io/hostname label, and what a hostNetwork pod sees).
	on "$n" sh -ec "hostname $n
		sysctl -qw net.ipv4.ip_forward=1
		[ ! -e /proc/sys/net/bridge/bridge-nf-call-iptables ] || sysctl -qw net.bridge.bridge-nf-call-iptables=1"
	# The kubelet's cgroup root must exist. cgroup v1: one directory per
	# hierarchy, cpuset seeded from the root. cgroup v2: one directory, with
	# the controllers enabled on the way down (the kubelet's libcontainer
	# enables them below it).
	for d in $(cgroup_dirs "$n"); do mkdir -p "$d"; done
	if $v2; then
		for c in $(cat /sys/fs/cgroup/cgroup.controllers); do
			echo "+$c" >/sys/fs/cgroup/cgroup.subtree_control 2>/dev/null || true
		done
	elif [ -d /sys/fs/cgroup/cpuset/flashpv-$n ]; then
		cat /sys/fs/cgroup/cpuset/cpuset.cpus >"/sys/fs/cgroup/cpuset/flashpv-$n/cpuset.cpus"
		cat /sys/fs/cgroup/cpuset/cpuset.mems >"/sys/fs/cgroup/cpuset/flashpv-$n/cpuset.mems"
	fi
	# The node's own pool filesystem, so capacities differ per node.
	if [ ! -f "$D/pool.img" ]; then
		truncate -s "$(pool_size "$n")" "$D/pool.img.tmp"
		mkfs.ext4 -q -m 0 -F "$D/pool.img.tmp"
		mv "$D/pool.img.tmp" "$D/pool.img"
	fi
	mkdir -p "$D/var-lib" "$D/run" "$D/log" "$D/cni"
	if ! on "$n" mountpoint -q /var/lib/flashpv; then
		# The node's mount namespace started as a private copy of the host's.
		# 1. Copies of what is not ours are detached (nothing happens on the
		#    host): filesystems on loop devices, namespace pins and anything
		#    below a kubelet's or containerd's directories; kept, they would
		#    hold other users' filesystems busy after they unmount them.
		#    Twice: a detached parent takes its children along.
		# 2. /var/lib, /run and /var/log become the node's own, which covers
		#    every hard-coded path of containerd, the CNI plugins, the kubelet
		#    and flashpv (its pool hostPath /var/lib/flashpv).
		# 3. The pool filesystem at /var/lib/flashpv.
		# 4. Only then is everything made shared: each mount gets a peer group
		#    of this node alone (bound after that, /var/lib would be a peer of
		#    / and every volume mount would show twice).
		# shellcheck disable=SC2016 # awk's own $ fields
		on "$n" sh -ec '
			for pass in 1 2; do
				awk '"'"'{ for (i = 7; i <= NF; i++) if ($i == "-") break; fs = $(i + 1) }
					$5 != "/" && ($3 ~ /^7:/ || fs == "nsfs") || $5 ~ "^/(var/lib/kubelet|run/netns|run/containerd|var/lib/containerd)(/|$)" { print $5 }'"'"' \
					/proc/self/mountinfo | sort -ru | xargs -r -n1 umount -l 2>/dev/null || true
			done
			mount --bind "$1/var-lib" /var/lib
			mount --bind "$1/run" /run
			mount --bind "$1/log" /var/log
			mkdir -p /var/lib/flashpv /var/lib/kubelet
			mount -o loop "$1/pool.img" /var/lib/flashpv
			mount --make-rshared /' sh "$D"
	fi
	cat >"$D/containerd.toml" <<CFG
version = 2
root = "/var/lib/containerd"
state = "/run/containerd"
[grpc]
  address = "/run/containerd/containerd.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "/var/lib/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "localhost/pause:local"
  # These machines may lack CAP_SYS_RESOURCE: a negative oom_score_adj (which
  # the kubelet asks for sandboxes) is refused, so clamp it to containerd's own.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$D/cni"
CFG
	cat >"$D/cni/10-flashpv-local.conflist" <<CFG
{
  "cniVersion": "0.4.0",
  "name": "flashpv-local",
  "plugins": [
    {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "$(pod_cidr "$n")"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
CFG
	cat >"$D/kubelet.yaml" <<CFG
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $P/ca.crt}
authorization: {mode: Webhook}
cgroupDriver: cgroupfs
cgroupRoot: /flashpv-$n
containerRuntimeEndpoint: unix:///run/containerd/containerd.sock
clusterDomain: cluster.local
tlsCertFile: $P/kubelet-$n-serving.crt
tlsPrivateKeyFile: $P/kubelet-$n-serving.key
failSwapOn: false
# The kubelet asks CSI drivers for volume health (NodeGetVolumeHealth) and
# writes it into the pod's status.volumeHealth; every 10 s here.
featureGates: {CSIVolumeHealth: true}
volumeStatsAggPeriod: 10s
# cgroup v1 hosts: kubelets since 1.35 refuse them by default.
failCgroupV1: false
resolvConf: /etc/resolv.conf
serializeImagePulls: false
# Images are imported, never pulled: never collect them.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: "100Mi"
  nodefs.available: "1%"
  nodefs.inodesFree: "1%"
  imagefs.available: "1%"
registerNode: true
rotateCertificates: false
CFG
	cat >"$D/kube-proxy.yaml" <<CFG
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $STATE/kc/kube-proxy.kubeconfig}
hostnameOverride: $n
clusterCIDR: $CLUSTER_CIDR
mode: iptables
metricsBindAddress: 127.0.0.1:10249
healthzBindAddress: 127.0.0.1:10256
# nf_conntrack_max and the conntrack timeouts are not writable outside the
# host's network namespace.
conntrack: {maxPerCore: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
CFG
	start_on "$n" containerd containerd --config "$D/containerd.toml"
done

# Images into every node's containerd at once, then the kubelets.
import_images() {
	local sock; sock=$(containerd_sock "$1")
	wait_for 30 "containerd on $1" ctr -a "$sock" version
	for img in pause busybox csi-provisioner csi-resizer csi-snapshotter snapshot-controller flashpv; do
		ctr -a "$sock" -n k8s.io images import "$STATE/images/$img.tar" >/dev/null
	done
}
pids=()
for n in $(node_names); do import_images "$n" & pids+=($!); done
for p in "${pids[@]}"; do wait "$p" || die "importing images failed"; done
log "containerd up and images imported on $(node_names | wc -l) node(s) ($((SECONDS - T0))s)"
for n in $(node_names); do
	start_on "$n" kubelet kubelet --config="$STATE/$n/kubelet.yaml" --kubeconfig="$STATE/kc/kubelet-$n.kubeconfig" \
		--root-dir=/var/lib/kubelet --cert-dir=/var/lib/kubelet/pki \
		--node-ip="$(node_ip "$n")" --hostname-override="$n" --v=2
	start_on "$n" kube-proxy kube-proxy --config="$STATE/$n/kube-proxy.yaml"
done

ready() {
	[ "$(kubectl get nodes -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' | grep -c True)" = "$(wc -l <"$STATE/nodes")" ]
}
wait_for 180 "$(wc -l <"$STATE/nodes") node(s) Ready" ready
wait_for 60 "the default service account" kubectl get serviceaccount default
log "cluster up: $(node_names | tr '\n' ' ')Ready in $((SECONDS - T0))s; KUBECONFIG=$KUBECONFIG"
