package childproc

import (
	"os"
	"syscall"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestOnInterrupt(t *testing.T) {
	t.Run("signal", func(t *testing.T) {
		got := make(chan os.Signal, 1)
		stop := OnInterrupt(func(sig os.Signal) { got <- sig })
		if err := syscall.Kill(os.Getpid(), syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if sig := <-got; sig != syscall.SIGTERM {
			t.Errorf("f got %v, want SIGTERM", sig)
		}
		stop()
	})
	t.Run("stopped", func(t *testing.T) {
		called := false
		stop := OnInterrupt(func(os.Signal) { called = true })
		stop()
		if called {
			t.Error("f called without a signal")
		}
	})
}
