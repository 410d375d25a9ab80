#!/usr/bin/env bash
# Generates the cluster's certificates and kubeconfigs once: a CA, the
# apiserver's serving certificate, client certificates for every component,
# one client and one serving certificate per node (system:node:node-N, so the
# Node authorizer and NodeRestriction treat each node as its own machine), and
# the service-account key pair.
source "$(dirname "$0")/lib.sh"
P=$STATE/pki
KC=$STATE/kc
stamp="$CP_IP $(node_names | tr '\n' ' ')"
if [ -f "$P/.done" ] && [ "$(cat "$P/.done")" = "$stamp" ]; then exit 0; fi
rm -rf "$P" "$KC"
mkdir -p "$P" "$KC"
chmod 700 "$P"
cd "$P"
openssl genrsa -out ca.key 2048 2>/dev/null
openssl req -x509 -new -nodes -key ca.key -subj "/CN=flashpv-local-ca" -days 3650 -out ca.crt 2>/dev/null

# issue NAME SUBJECT [SANS]: a key and a certificate signed by the CA; with
# SANs it serves (and is a client), without it is a client only.
issue() {
	local name=$1 subj=$2 sans=${3:-}
	openssl genrsa -out "$name.key" 2048 2>/dev/null
	openssl req -new -key "$name.key" -subj "$subj" -out "$name.csr" 2>/dev/null
	{
		echo "basicConstraints=CA:FALSE"
		echo "keyUsage=critical,digitalSignature,keyEncipherment"
		if [ -n "$sans" ]; then
			echo "extendedKeyUsage=serverAuth,clientAuth"
			echo "subjectAltName=$sans"
		else
			echo "extendedKeyUsage=clientAuth"
		fi
	} >"$name.ext"
	openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 -extfile "$name.ext" -out "$name.crt" 2>/dev/null
	rm -f "$name.csr" "$name.ext"
}
issue apiserver "/CN=kube-apiserver" "DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost,IP:127.0.0.1,IP:$CP_IP,IP:${SERVICE_CIDR%.0/*}.1"
issue apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client"
issue admin "/O=system:masters/CN=kubernetes-admin"
issue controller-manager "/CN=system:kube-controller-manager"
issue scheduler "/CN=system:kube-scheduler"
issue kube-proxy "/CN=system:kube-proxy"
for n in $(node_names); do
	issue "kubelet-$n" "/O=system:nodes/CN=system:node:$n"
	issue "kubelet-$n-serving" "/CN=$n" "DNS:$n,IP:$(node_ip "$n")"
done
openssl genrsa -out sa.key 2048 2>/dev/null
openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null

for user in admin controller-manager scheduler kube-proxy $(node_names | sed 's/^/kubelet-/'); do
	cat >"$KC/$user.kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster:
    certificate-authority: $P/ca.crt
    server: https://$CP_IP:6443
users:
- name: $user
  user:
    client-certificate: $P/$user.crt
    client-key: $P/$user.key
contexts:
- name: local
  context: {cluster: local, user: $user}
current-context: local
KC
done
echo "$stamp" >"$P/.done"
log "PKI and kubeconfigs in $STATE"
