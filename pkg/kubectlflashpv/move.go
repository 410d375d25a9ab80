package kubectlflashpv

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
)

// The move controller's interface on the claim (docs/moving.md,
// docs/reference.md): the request, the state it shows, the states that
// end a move, and the reasons of the Events that say why one failed.
const (
	annRequest           = "flashpv.dev/move-to"
	annState             = "flashpv.dev/move-state"
	stateDone            = "Done"
	rolledBack           = "RolledBack"
	reasonMoveRefused    = "MoveRefused"
	reasonMoveRolledBack = "MoveRolledBack"
)

type moveOptions struct {
	to      string
	wait    bool
	timeout time.Duration
}

func (o *moveOptions) addFlags(fs *flag.FlagSet) {
	fs.StringVar(&o.to, "to", "", `the node to move to, or "any" for any node that fits`)
	fs.BoolVar(&o.wait, "wait", true, "wait until the move is done or has failed")
	fs.DurationVar(&o.timeout, "timeout", 30*time.Minute, "how long to wait")
}

// MoveResult is what `move` ends with.
type MoveResult struct {
	Claim   string `json:"claim"`
	To      string `json:"to"`
	State   string `json:"state"`
	Message string `json:"message,omitempty"`
}

// Move asks for the claim's volume to be moved (the annotation
// flashpv.dev/move-to, which the flashpv controller carries out) and,
// with --wait, follows flashpv.dev/move-state until Done, RolledBack, a
// refusal, or the timeout.
func (a *App) Move(ctx context.Context, claim string, o moveOptions) error {
	if o.to == "" {
		return errors.New(`move needs --to NODE (or --to any)`)
	}
	if a.Namespace == "" {
		a.Namespace = "default"
	}
	claims := a.Client.CoreV1().PersistentVolumeClaims(a.Namespace)
	c, err := claims.Get(ctx, claim, metav1.GetOptions{})
	if err != nil {
		return api(err, "get", "persistentvolumeclaims", a.Namespace)
	}
	ann := map[string]any{annRequest: o.to}
	// A finished move's state would read as this one's.
	if s := c.Annotations[annState]; s == stateDone || s == rolledBack {
		ann[annState] = nil
	}
	body, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": ann}})
	asked := a.Now().Add(-time.Second)
	if _, err := claims.Patch(ctx, claim, types.MergePatchType, body, metav1.PatchOptions{}); err != nil {
		return api(err, "patch", "persistentvolumeclaims", a.Namespace)
	}
	res := MoveResult{Claim: a.Namespace + "/" + claim, To: o.to, State: "Requested"}
	if !o.wait {
		return a.printMove(res)
	}
	fmt.Fprintf(a.Err, "Asked to move %s to %s; waiting (up to %s) for the flashpv controller\n", res.Claim, o.to, o.timeout)
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	err = a.waitMove(ctx, claim, asked, &res)
	if perr := a.printMove(res); perr != nil {
		return perr
	}
	return err
}

func (a *App) waitMove(ctx context.Context, claim string, asked time.Time, res *MoveResult) error {
	claims := a.Client.CoreV1().PersistentVolumeClaims(a.Namespace)
	seen := ""
	for {
		c, err := claims.Get(ctx, claim, metav1.GetOptions{})
		switch {
		case err == nil:
			st := c.Annotations[annState]
			if st != "" && st != seen {
				fmt.Fprintf(a.Err, "%s  %s\n", a.Now().Format(time.TimeOnly), st)
				seen, res.State = st, st
			}
			switch st {
			case stateDone:
				res.Message = "moved"
				return nil
			case rolledBack:
				res.Message = a.lastEvent(ctx, c, asked, reasonMoveRolledBack)
				return fmt.Errorf("the move failed and was rolled back: %s", res.Message)
			}
			if msg := a.lastEvent(ctx, c, asked, reasonMoveRefused); msg != "" && st == "" {
				res.State, res.Message = "Refused", msg
				return fmt.Errorf("the flashpv controller refused the move: %s", msg)
			}
		case ctx.Err() == nil:
			// The claim may be recreated by its StatefulSet (a move by
			// swapping claims): keep looking.
			var f *forbidden
			if err := api(err, "get", "persistentvolumeclaims", a.Namespace); errors.As(err, &f) {
				return err
			}
		}
		select {
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return fmt.Errorf("the move is not done: still %q when the wait timed out (it goes on; kubectl flashpv volumes shows where the volume is)", res.State)
			}
			return ctx.Err()
		case <-time.After(a.Poll):
		}
	}
}

// lastEvent is the message of the newest Event of reason on the claim since
// the request, "" when there is none (or Events cannot be read).
func (a *App) lastEvent(ctx context.Context, c *corev1.PersistentVolumeClaim, since time.Time, reason string) string {
	sel := fields.Set{"involvedObject.uid": string(c.UID), "reason": reason}.AsSelector().String()
	list, err := a.Client.CoreV1().Events(c.Namespace).List(ctx, metav1.ListOptions{FieldSelector: sel})
	if err != nil {
		return ""
	}
	msg, newest := "", time.Time{}
	for _, e := range list.Items {
		if e.InvolvedObject.UID != c.UID || e.Reason != reason {
			continue // fake clients ignore field selectors
		}
		t := e.LastTimestamp.Time
		if t.IsZero() {
			t = e.EventTime.Time
		}
		if t.Before(since) || t.Before(newest) {
			continue
		}
		msg, newest = e.Message, t
	}
	return msg
}

func (a *App) printMove(res MoveResult) error {
	return a.print(res, func(w io.Writer) {
		fmt.Fprintf(w, "%s: %s", res.Claim, res.State)
		if res.Message != "" {
			fmt.Fprintf(w, " (%s)", res.Message)
		}
		fmt.Fprintln(w)
	})
}
