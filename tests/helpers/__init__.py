"""What the tests share: settings on a temporary data dir and scratch databases, real
`tapefit` processes, worker clusters, trained models, and hand-built inputs. Test modules
import from here, never from one another."""
