package clustercontroller

import (
	"context"
	"fmt"
	"slices"

	authnv1 "k8s.io/api/authentication/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"

	"github.com/flashpv/flashpv/pkg/transfer/broker"
)

// The extra fields of a bound ServiceAccount token's user.
const (
	extraNodeName = "authentication.kubernetes.io/node-name" // Kubernetes 1.30 and later
	extraPodName  = "authentication.kubernetes.io/pod-name"
	extraPodUID   = "authentication.kubernetes.io/pod-uid"
)

// tokenAuthenticator tells the node a node plugin runs on from its
// projected ServiceAccount token, through a TokenReview.
type tokenAuthenticator struct {
	client         kubernetes.Interface
	namespace      string
	serviceAccount string
	pods           corelisters.PodLister
}

func unauthenticated(format string, args ...any) error {
	return broker.Errorf(broker.CodeUnauthenticated, format, args...)
}

// Authenticate accepts only a valid token for the broker's audience of
// the node plugins' ServiceAccount, bound to a pod, and returns that pod's
// node.
func (a *tokenAuthenticator) Authenticate(ctx context.Context, token string) (string, error) {
	tr, err := a.client.AuthenticationV1().TokenReviews().Create(ctx, &authnv1.TokenReview{
		Spec: authnv1.TokenReviewSpec{Token: token, Audiences: []string{broker.Audience}},
	}, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("TokenReview: %w", err)
	}
	st := tr.Status
	if !st.Authenticated {
		return "", unauthenticated("the token is not valid: %s", st.Error)
	}
	// A reviewer that ignored the audience answers none: never accept
	// a token meant for someone else.
	if !slices.Contains(st.Audiences, broker.Audience) {
		return "", unauthenticated("the token is not for audience %s", broker.Audience)
	}
	if want := "system:serviceaccount:" + a.namespace + ":" + a.serviceAccount; st.User.Username != want {
		return "", unauthenticated("%s is not the node plugins' ServiceAccount %s", st.User.Username, want)
	}
	name, okName := single(st.User.Extra, extraPodName)
	uid, okUID := single(st.User.Extra, extraPodUID)
	if !okName || !okUID {
		return "", unauthenticated("the token is not bound to a pod")
	}
	// The API server caches a successful authentication (10 s by
	// default): its review may accept the token of a pod deleted since.
	// So the pod must be in the cache with the token's UID too, on the
	// token's node if it names one. A pod's node never changes once set.
	pod, err := a.pods.Pods(a.namespace).Get(name)
	if apierrors.IsNotFound(err) {
		return "", broker.Errorf(broker.CodeUnavailable, "pod %s/%s is not known (yet, or any more); try again", a.namespace, name)
	}
	if err != nil {
		return "", err
	}
	if string(pod.UID) != uid {
		return "", unauthenticated("pod %s/%s has another UID than the token's", a.namespace, name)
	}
	if pod.Spec.NodeName == "" {
		return "", unauthenticated("pod %s/%s is not on a node", a.namespace, name)
	}
	if _, named := st.User.Extra[extraNodeName]; named {
		if node, ok := single(st.User.Extra, extraNodeName); !ok || node != pod.Spec.NodeName {
			return "", unauthenticated("the token names node %v, pod %s/%s is on %s", st.User.Extra[extraNodeName], a.namespace, name, pod.Spec.NodeName)
		}
	}
	return pod.Spec.NodeName, nil
}

func single(extra map[string]authnv1.ExtraValue, key string) (string, bool) {
	v := extra[key]
	if len(v) != 1 || v[0] == "" {
		return "", false
	}
	return v[0], true
}
