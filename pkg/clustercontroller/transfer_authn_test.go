package clustercontroller

import (
	"context"
	"errors"
	"slices"
	"testing"

	authnv1 "k8s.io/api/authentication/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	corelisters "k8s.io/client-go/listers/core/v1"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/cache"

	"github.com/flashpv/flashpv/pkg/transfer/broker"
)

const nodeSA = "system:serviceaccount:flashpv:flashpv-node"

// reviewTokens answers TokenReviews from reviews (token -> status), as an
// API server would for a review that asks for the broker's audience.
func reviewTokens(t *testing.T, client *fake.Clientset, reviews map[string]authnv1.TokenReviewStatus) {
	client.PrependReactor("create", "tokenreviews", func(a k8stesting.Action) (bool, runtime.Object, error) {
		tr := a.(k8stesting.CreateAction).GetObject().(*authnv1.TokenReview)
		if !slices.Equal(tr.Spec.Audiences, []string{broker.Audience}) {
			t.Errorf("TokenReview for audiences %v", tr.Spec.Audiences)
		}
		if tr.Spec.Token == "api-down" {
			return true, nil, errors.New("connection refused")
		}
		out := tr.DeepCopy()
		out.Status = reviews[tr.Spec.Token]
		return true, out, nil
	})
}

func reviewed(user string, extra map[string]authnv1.ExtraValue) authnv1.TokenReviewStatus {
	return authnv1.TokenReviewStatus{Authenticated: true, Audiences: []string{broker.Audience},
		User: authnv1.UserInfo{Username: user, Extra: extra}}
}

func TestAuthenticate(t *testing.T) {
	podExtra := func(name, uid string) map[string]authnv1.ExtraValue {
		return map[string]authnv1.ExtraValue{extraPodName: {name}, extraPodUID: {uid}}
	}
	// A pod-bound token names the pod's node too (Kubernetes 1.30 and
	// later); the review may come from the API server's cache of
	// successful reviews, after the pod was deleted or replaced.
	withNode := func(extra map[string]authnv1.ExtraValue, node string) map[string]authnv1.ExtraValue {
		extra[extraNodeName] = authnv1.ExtraValue{node}
		return extra
	}
	reviews := map[string]authnv1.TokenReviewStatus{
		"bound":           reviewed(nodeSA, withNode(podExtra("flashpv-node-a", "flashpv-node-a-uid"), "n1")),
		"bound-no-uid":    reviewed(nodeSA, map[string]authnv1.ExtraValue{extraNodeName: {"n1"}, extraPodName: {"flashpv-node-a"}}),
		"bound-gone":      reviewed(nodeSA, withNode(podExtra("flashpv-node-a", "deleted"), "n1")),
		"bound-elsewhere": reviewed(nodeSA, withNode(podExtra("flashpv-node-a", "flashpv-node-a-uid"), "n2")),
		"pod":             reviewed(nodeSA, podExtra("flashpv-node-a", "flashpv-node-a-uid")),
		"pod-other-uid":   reviewed(nodeSA, podExtra("flashpv-node-a", "recreated")),
		"pod-not-cached":  reviewed(nodeSA, podExtra("flashpv-node-new", "new-uid")),
		"pod-no-uid":      reviewed(nodeSA, map[string]authnv1.ExtraValue{extraPodName: {"flashpv-node-a"}}),
		"unbound":         reviewed(nodeSA, nil),
		"expired":         {Authenticated: false, Error: "token has expired"},
		"other-sa":        reviewed("system:serviceaccount:flashpv:flashpv-controller", withNode(podExtra("flashpv-node-a", "flashpv-node-a-uid"), "n1")),
		"other-ns":        reviewed("system:serviceaccount:apps:flashpv-node", withNode(podExtra("flashpv-node-a", "flashpv-node-a-uid"), "n1")),
		"user":            reviewed("alice", withNode(podExtra("flashpv-node-a", "flashpv-node-a-uid"), "n1")),
		"no-audience": {Authenticated: true, User: authnv1.UserInfo{Username: nodeSA,
			Extra: withNode(podExtra("flashpv-node-a", "flashpv-node-a-uid"), "n1")}},
		"two-nodes": reviewed(nodeSA, func() map[string]authnv1.ExtraValue {
			e := podExtra("flashpv-node-a", "flashpv-node-a-uid")
			e[extraNodeName] = authnv1.ExtraValue{"n1", "n3"}
			return e
		}()),
	}
	client := fake.NewClientset()
	reviewTokens(t, client, reviews)
	pods := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
	_ = pods.Add(nodePod("flashpv-node-a", "n1", "10.0.0.1"))
	a := &tokenAuthenticator{client: client, namespace: testNS, serviceAccount: "flashpv-node", pods: corelisters.NewPodLister(pods)}
	for _, tc := range []struct {
		token, node, code string
	}{
		{"bound", "n1", ""},
		{"bound-no-uid", "", broker.CodeUnauthenticated},
		{"bound-gone", "", broker.CodeUnauthenticated},
		{"bound-elsewhere", "", broker.CodeUnauthenticated},
		{"pod", "n1", ""},
		{"pod-other-uid", "", broker.CodeUnauthenticated},
		{"pod-not-cached", "", broker.CodeUnavailable},
		{"pod-no-uid", "", broker.CodeUnauthenticated},
		{"unbound", "", broker.CodeUnauthenticated},
		{"expired", "", broker.CodeUnauthenticated},
		{"unknown", "", broker.CodeUnauthenticated},
		{"other-sa", "", broker.CodeUnauthenticated},
		{"other-ns", "", broker.CodeUnauthenticated},
		{"user", "", broker.CodeUnauthenticated},
		{"no-audience", "", broker.CodeUnauthenticated},
		{"two-nodes", "", broker.CodeUnauthenticated},
		{"api-down", "", broker.CodeInternal},
	} {
		t.Run(tc.token, func(t *testing.T) {
			node, err := a.Authenticate(context.Background(), tc.token)
			if tc.code == "" {
				if err != nil || node != tc.node {
					t.Fatalf("node %q, %v; want %s", node, err, tc.node)
				}
				return
			}
			var e *broker.Error
			code := broker.CodeInternal // what the server makes of other errors
			if errors.As(err, &e) {
				code = e.Code
			}
			if err == nil || node != "" || code != tc.code {
				t.Fatalf("node %q, %v; want %s", node, err, tc.code)
			}
		})
	}
}
