package filters

import (
	"context"
	"io"
	"sync/atomic"
	"testing"
	"time"
)

// sendingStarter is a Starter whose work is a Sender: it reads the
// message as it arrives and says Sent once the test lets it.
type sendingStarter struct {
	funcFilter
	release chan struct{} // closing it lets the work say Sent
}

type sendingWork struct{ sent chan struct{} }

func (w *sendingWork) Sent() <-chan struct{} { return w.sent }

func (s *sendingStarter) Start(_ context.Context, r io.Reader) any {
	w := &sendingWork{sent: make(chan struct{})}
	go func() {
		_, _ = io.Copy(io.Discard, r)
		<-s.release
		close(w.sent)
	}()
	return w
}

// The chain's run waits until the work its first filter began on the
// message has sent all of it, before it reads the message itself (here:
// the encrypted setting's parse) and runs the filter; a context that ends
// ends the wait.
func TestChainWaitsForStartedSend(t *testing.T) {
	var sentFirst atomic.Bool
	st := &sendingStarter{release: make(chan struct{})}
	var work *sendingWork
	st.funcFilter = funcFilter{name: "av", fn: func(_ context.Context, env *Envelope, body Body) (Verdict, error) {
		select {
		case <-work.sent:
			sentFirst.Store(true)
		default:
		}
		return Verdict{Action: Pass}, nil
	}}
	c := &Chain{Filters: []Filter{st}, Encrypted: EncryptedPassWithTag}
	receive := func() (Body, *Started) {
		w := c.Spool.NewWriter()
		started := c.Start(context.Background(), w)
		if started == nil {
			t.Fatal("Chain.Start began nothing")
		}
		work = started.work.(*sendingWork)
		w.Write([]byte("Subject: x\r\n\r\nhello\r\n"))
		in, err := w.Finish()
		if err != nil {
			t.Fatal(err)
		}
		return in, started
	}

	in, started := receive()
	go func() {
		time.Sleep(50 * time.Millisecond)
		close(st.release)
	}()
	res := c.Run(context.Background(), WithStarted(&Envelope{}, started), in)
	if res.Outcome != Deliver || !sentFirst.Load() {
		t.Errorf("outcome %v, filter ran after the work had sent everything: %v; want deliver, true", res.Outcome, sentFirst.Load())
	}
	res.Release()
	in.Remove()

	st.release = make(chan struct{}) // never released
	in, started = receive()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	done := make(chan *Result, 1)
	go func() { done <- c.Run(ctx, WithStarted(&Envelope{}, started), in) }()
	select {
	case res := <-done:
		res.Release()
	case <-time.After(5 * time.Second):
		t.Fatal("the chain still waits for a send after its context ended")
	}
	close(st.release)
	in.Remove()
}
