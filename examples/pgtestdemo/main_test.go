package main

import (
	"bytes"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestDemo(t *testing.T) {
	var out bytes.Buffer
	t.Cleanup(func() { t.Log("\n" + out.String()) })
	res := run(t, &out)
	assert.Positive(t, res.Acked)
	assert.GreaterOrEqual(t, res.Stored, res.Acked, "no acknowledged write is lost with synchronous replication")
	assert.GreaterOrEqual(t, res.Resumed, time.Duration(0), "writes resumed after the promotion")
	assert.Regexp(t, `c\.FailOver\(\): node[12] promoted`, out.String())
	assert.Contains(t, out.String(), "is a replica of")
}
