package proxy

import (
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/popgate/popgate/filters"
	"github.com/popgate/popgate/proxy/pop3"
)

// defaultSpool holds messages of chains that name no spool of their own.
var defaultSpool = &filters.Spool{MemoryLimit: 1 << 20}

// retrieve handles RETR and TOP: the interception point. Without filters the
// response streams through untouched; with filters it is decoded into a
// spool, the chain runs, and its result is sent. Either way the client sees
// a terminating "." only after the whole message was received and passed.
func (s *session) retrieve(cmd pop3.Command, line []byte) error {
	if err := s.send(line); err != nil {
		return err
	}
	status, st, err := s.readStatus()
	if err != nil {
		return err
	}
	if !st.OK {
		s.writeLine(status)
		return nil
	}
	s.messages++
	if s.chain.Empty() {
		s.writeLine(status)
		return s.relayBody()
	}
	status = append([]byte(nil), status...) // the reader buffer moves on
	msgNum, _ := strconv.Atoi(firstArg(cmd))

	spool := s.chain.Spool
	if spool == nil {
		spool = defaultSpool
	}
	sw := spool.NewWriter()
	if _, err := pop3.NewDotReader(s.up.r).WriteTo(sw); err != nil {
		sw.Abort()
		return upstreamErr(fmt.Errorf("%s %d: %w", cmd.Name, msgNum, err))
	}
	body, err := sw.Finish()
	if err != nil {
		s.log.Error().Err(err).Int("msg", msgNum).Msg("spool failed")
		s.replyErr("SYS/TEMP", "message could not be checked, try again later")
		return nil
	}
	defer body.Remove()

	env := &filters.Envelope{
		SessionID: s.id, User: s.user, Client: s.client, Listener: s.cfg.Name,
		Upstream: s.upName, Command: cmd.Name, MsgNum: msgNum,
	}
	start := time.Now()
	res := s.chain.Run(s.ctx, env, body)
	defer res.Release()
	s.logResult(env, body, res, time.Since(start))

	switch res.Outcome {
	case filters.Deliver:
		if res.Body != body {
			status = []byte("+OK " + strconv.FormatInt(res.Body.Size(), 10) + " octets")
		}
		s.writeLine(status)
		return s.sendBody(res.Body)
	case filters.Refuse:
		s.replyErr("SYS/PERM", "message refused by policy")
	default:
		s.replyErr("SYS/TEMP", "message could not be checked, try again later")
	}
	return nil
}

// sendBody dot-encodes a spooled message to the client. A failure part way
// closes the session without a terminator, so the client never takes a cut
// message for a whole one.
func (s *session) sendBody(b filters.Body) error {
	s.responding = true
	rc, err := b.Open()
	if err != nil {
		return fmt.Errorf("opening filtered message: %w", err)
	}
	defer rc.Close()
	dw := pop3.NewDotWriter(s.cw)
	if _, err := io.Copy(dw, rc); err != nil {
		return fmt.Errorf("sending filtered message: %w", err)
	}
	return dw.Close()
}

func (s *session) logResult(env *filters.Envelope, in filters.Body, res *filters.Result, d time.Duration) {
	ev := s.log.Info().Str("command", env.Command).Int("msg", env.MsgNum).Int64("size", in.Size()).
		Str("outcome", res.Outcome.String()).Dur("filter_time", d)
	if res.Reason != "" {
		ev = ev.Str("reason", res.Reason)
	}
	if res.FailedOpen {
		ev = ev.Bool("failed_open", true)
	}
	for _, st := range res.Steps {
		e := s.log.Debug().Str("filter", st.Filter).Str("action", st.Action.String()).Dur("took", st.Duration)
		if st.Err != nil {
			e = e.AnErr("filter_error", st.Err)
		}
		e.Int("msg", env.MsgNum).Msg("filter step")
	}
	ev.Msg("message filtered")
}

func firstArg(cmd pop3.Command) string {
	if len(cmd.Args) == 0 {
		return ""
	}
	return cmd.Args[0]
}
