//! KVM backend for `vcpu_sync`.
