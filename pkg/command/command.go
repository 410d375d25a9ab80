// Package command runs the external programs flashpv needs (mkfs, e2fsck,
// resize2fs, xfs_growfs, blkid...) under the context of the call that needs
// them. Each runs in a process group of its own, which is killed whole when
// the context ends, and dies with flashpv if flashpv dies first, so that a
// retried call never races a leftover of the call before it.
package command

import (
	"context"
	"errors"
	"io"
	"os/exec"
	"syscall"
	"time"

	utilexec "k8s.io/utils/exec"
)

// killWait is how long Wait waits for output after the group was killed.
const killWait = 5 * time.Second

// DefaultTimeout bounds a command whose context has no deadline of its own
// (a CO always sets one on its calls; a metrics scrape or a startup task
// may not).
const DefaultTimeout = 10 * time.Minute

// Command returns cmd bound to ctx: own process group, killed on ctx's end
// and on flashpv's death.
func Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	c := exec.CommandContext(ctx, name, args...)
	c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	c.Cancel = func() error {
		// The whole group: helpers a program forks go with it.
		return syscall.Kill(-c.Process.Pid, syscall.SIGKILL)
	}
	c.WaitDelay = killWait
	return c
}

// Output runs a command and returns its combined output. A non-zero exit
// gives an error that satisfies k8s.io/utils/exec's ExitError.
func Output(ctx context.Context, name string, args ...string) ([]byte, error) {
	ctx, cancel := bounded(ctx)
	defer cancel()
	out, err := Command(ctx, name, args...).CombinedOutput()
	return out, wrapErr(ctx, err)
}

// bounded gives ctx the default timeout unless it has a deadline.
func bounded(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, DefaultTimeout)
}

func wrapErr(ctx context.Context, err error) error {
	if err == nil {
		return nil
	}
	if ctx.Err() != nil {
		return errors.Join(err, ctx.Err())
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return &utilexec.ExitErrorWrapper{ExitError: ee}
	}
	return err
}

// Exec is a k8s.io/utils/exec.Interface whose commands are all bound to one
// context, for libraries (mount-utils) that take an exec.Interface.
func Exec(ctx context.Context) utilexec.Interface { return ctxExec{ctx} }

type ctxExec struct{ ctx context.Context }

func (e ctxExec) Command(name string, args ...string) utilexec.Cmd {
	return e.CommandContext(e.ctx, name, args...)
}

func (e ctxExec) CommandContext(ctx context.Context, name string, args ...string) utilexec.Cmd {
	ctx, cancel := bounded(ctx)
	return &cmd{Command(ctx, name, args...), ctx, cancel}
}

func (e ctxExec) LookPath(file string) (string, error) { return exec.LookPath(file) }

// cmd releases its timeout once the command has finished.
type cmd struct {
	c      *exec.Cmd
	ctx    context.Context
	cancel context.CancelFunc
}

func (c *cmd) Run() error {
	defer c.cancel()
	return wrapErr(c.ctx, c.c.Run())
}
func (c *cmd) CombinedOutput() ([]byte, error) {
	defer c.cancel()
	out, err := c.c.CombinedOutput()
	return out, wrapErr(c.ctx, err)
}
func (c *cmd) Output() ([]byte, error) {
	defer c.cancel()
	out, err := c.c.Output()
	return out, wrapErr(c.ctx, err)
}
func (c *cmd) SetDir(dir string)                  { c.c.Dir = dir }
func (c *cmd) SetStdin(in io.Reader)              { c.c.Stdin = in }
func (c *cmd) SetStdout(out io.Writer)            { c.c.Stdout = out }
func (c *cmd) SetStderr(out io.Writer)            { c.c.Stderr = out }
func (c *cmd) SetEnv(env []string)                { c.c.Env = env }
func (c *cmd) StdoutPipe() (io.ReadCloser, error) { return c.c.StdoutPipe() }
func (c *cmd) StderrPipe() (io.ReadCloser, error) { return c.c.StderrPipe() }
func (c *cmd) Start() error                       { return c.c.Start() }
func (c *cmd) Wait() error                        { return wrapErr(c.ctx, c.c.Wait()) }
func (c *cmd) Stop() {
	if c.c.Process != nil {
		syscall.Kill(-c.c.Process.Pid, syscall.SIGKILL)
	}
}
