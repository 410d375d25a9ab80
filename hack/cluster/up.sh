#!/usr/bin/env bash
# Starts a real single-node Kubernetes on this machine, as processes of this
# script: containerd, etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kubelet and kube-proxy. Idempotent: what already runs is
# left alone. `down.sh` undoes everything.
source "$(dirname "$0")/lib.sh"
[ "$(id -u)" = 0 ] || die "run as root"
[ -n "$NODE_IP" ] || die "no IPv4 address on this machine"
HERE=$(cd "$(dirname "$0")" && pwd)
"$HERE/install-deps.sh"
"$HERE/build.sh"
"$HERE/pki.sh"
"$HERE/images.sh"
mkdir -p "$STATE"/{run,logs,var,cni/net.d,containerd,kubelet}

# Remember what this machine looked like, once, so down.sh can restore it.
if [ ! -f "$STATE/machine.saved" ]; then
	{
		for k in vm.overcommit_memory kernel.panic kernel.panic_on_oops net.ipv4.ip_forward; do
			echo "sysctl $k $(sysctl -n $k)"
		done
		if [ -r /proc/modules ]; then
			grep -q '^br_netfilter ' /proc/modules && echo "module br_netfilter loaded" || echo "module br_netfilter absent"
		fi
		[ -e "$KUBELET_DIR" ] && echo "dir $KUBELET_DIR existed" || echo "dir $KUBELET_DIR absent"
		[ -e /run/containerd ] && echo "dir /run/containerd existed" || echo "dir /run/containerd absent"
		for d in /var/lib/cni /var/log/containers; do
			[ -e "$d" ] && echo "dir $d existed" || echo "dir $d absent"
		done
	} >"$STATE/machine.saved"
fi
modprobe br_netfilter 2>/dev/null || true
sysctl -qw net.ipv4.ip_forward=1
[ -e /proc/sys/net/bridge/bridge-nf-call-iptables ] && sysctl -qw net.bridge.bridge-nf-call-iptables=1

cat >"$STATE/containerd/config.toml" <<CFG
version = 2
root = "$STATE/var/containerd"
state = "$STATE/run/containerd"
[grpc]
  address = "$CONTAINERD_SOCK"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "localhost/pause:local"
  # These machines lack CAP_SYS_RESOURCE: a negative oom_score_adj (which the
  # kubelet asks for sandboxes) is refused, so clamp it to containerd's own.
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
    conf_dir = "$STATE/cni/net.d"
CFG
cat >"$STATE/cni/net.d/10-flashpv-local.conflist" <<CFG
{
  "cniVersion": "0.4.0",
  "name": "flashpv-local",
  "plugins": [
    {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "$POD_CIDR"}]], "routes": [{"dst": "0.0.0.0/0"}], "dataDir": "$STATE/var/cni-ipam"}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
CFG

start containerd containerd --config "$STATE/containerd/config.toml"
wait_for 30 containerd ctr -a "$CONTAINERD_SOCK" version
for img in pause busybox csi-provisioner csi-resizer flashpv; do
	ctr -a "$CONTAINERD_SOCK" -n k8s.io images import "$STATE/images/$img.tar" >/dev/null
done
log "containerd up, images imported"

mkdir -p "$STATE/var/etcd"
start etcd etcd --name flashpv-local --data-dir "$STATE/var/etcd" \
	--listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
	--listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
	--initial-cluster flashpv-local=http://127.0.0.1:2380 --listen-metrics-urls http://127.0.0.1:2381
wait_for 60 etcd curl -sf http://127.0.0.1:2381/health

P=$STATE/pki
start kube-apiserver kube-apiserver \
	--etcd-servers=http://127.0.0.1:2379 \
	--advertise-address="$NODE_IP" --bind-address=0.0.0.0 --secure-port=6443 \
	--tls-cert-file="$P/apiserver.crt" --tls-private-key-file="$P/apiserver.key" \
	--client-ca-file="$P/ca.crt" \
	--kubelet-client-certificate="$P/apiserver-kubelet-client.crt" --kubelet-client-key="$P/apiserver-kubelet-client.key" \
	--kubelet-certificate-authority="$P/ca.crt" --kubelet-preferred-address-types=InternalIP,Hostname \
	--service-account-key-file="$P/sa.pub" --service-account-signing-key-file="$P/sa.key" \
	--service-account-issuer=https://kubernetes.default.svc.cluster.local \
	--service-cluster-ip-range="$SERVICE_CIDR" \
	--authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
	--allow-privileged=true
# The controller manager exits when started before the RBAC bootstrap is done.
wait_for 120 kube-apiserver kubectl get --raw /readyz
start kube-controller-manager kube-controller-manager \
	--kubeconfig="$STATE/kc/controller-manager.kubeconfig" \
	--authentication-kubeconfig="$STATE/kc/controller-manager.kubeconfig" \
	--authorization-kubeconfig="$STATE/kc/controller-manager.kubeconfig" \
	--bind-address=127.0.0.1 --leader-elect=false \
	--service-account-private-key-file="$P/sa.key" --root-ca-file="$P/ca.crt" \
	--cluster-signing-cert-file="$P/ca.crt" --cluster-signing-key-file="$P/ca.key" \
	--use-service-account-credentials=true --service-cluster-ip-range="$SERVICE_CIDR"
start kube-scheduler kube-scheduler \
	--kubeconfig="$STATE/kc/scheduler.kubeconfig" \
	--authentication-kubeconfig="$STATE/kc/scheduler.kubeconfig" \
	--authorization-kubeconfig="$STATE/kc/scheduler.kubeconfig" \
	--bind-address=127.0.0.1 --leader-elect=false
log "control plane up"

cat >"$STATE/kubelet/config.yaml" <<CFG
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $P/ca.crt}
authorization: {mode: Webhook}
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
clusterDomain: cluster.local
tlsCertFile: $P/kubelet-serving.crt
tlsPrivateKeyFile: $P/kubelet-serving.key
podLogsDir: $STATE/var/log/pods
failSwapOn: false
# This host mounts cgroup v1; kubelets since 1.35 refuse that by default.
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
cat >"$STATE/kubelet/kube-proxy.yaml" <<CFG
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $STATE/kc/kube-proxy.kubeconfig}
hostnameOverride: $NODE_NAME
clusterCIDR: $POD_CIDR
mode: iptables
metricsBindAddress: 127.0.0.1:10249
healthzBindAddress: 127.0.0.1:10256
conntrack: {maxPerCore: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
CFG
mkdir -p "$KUBELET_DIR" "$STATE/var/log/pods"
start kubelet kubelet --config="$STATE/kubelet/config.yaml" --kubeconfig="$STATE/kc/kubelet.kubeconfig" \
	--root-dir="$KUBELET_DIR" --cert-dir="$STATE/kubelet/pki" \
	--node-ip="$NODE_IP" --hostname-override="$NODE_NAME" --v=2
start kube-proxy kube-proxy --config="$STATE/kubelet/kube-proxy.yaml"

node_ready() { [ "$(kubectl get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" = True ]; }
wait_for 120 "node $NODE_NAME Ready" node_ready
wait_for 60 "the default service account" kubectl get serviceaccount default
log "cluster up: node $NODE_NAME ($NODE_IP) Ready; KUBECONFIG=$KUBECONFIG"
