//! The QEMU command line of a guest: least privilege, direct kernel boot, virtio devices.

use super::*;

impl Qemu {
    /// The QEMU command line for `cfg` (without the binary).
    pub fn args(&self, cfg: &VmConfig, layout: &VmLayout, accel: Accel) -> Vec<OsString> {
        let mut a: Vec<OsString> = Vec::new();
        let mut push = |s: &str| a.push(s.into());
        push("-name");
        push(&format!("{},debug-threads=on", cfg.name));
        for s in [
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
            "-S",
        ] {
            push(s);
        }
        let shared_mem = cfg.needs_shared_memory();
        let machine = if shared_mem {
            "q35,memory-backend=mem"
        } else {
            "q35"
        };
        push("-machine");
        push(machine);
        push("-accel");
        push(&accel.to_string());
        if accel == Accel::Kvm {
            push("-cpu");
            push("host");
        }
        push("-smp");
        push(&cfg.vcpus.to_string());
        push("-m");
        push(&format!("{}M", cfg.memory_mib));
        if shared_mem {
            // vhost-user devices (virtio-fs) need guest RAM the daemon can map.
            push("-object");
            push(&format!(
                "memory-backend-memfd,id=mem,size={}M,share=on",
                cfg.memory_mib
            ));
        }
        if self.opts.sandbox {
            push("-sandbox");
            push("on,obsolete=deny,spawn=deny,resourcecontrol=deny");
        }
        if let Some(user) = self.run_as_user() {
            push("-runas");
            push(&user);
        }
        push("-append");
        let mut cmdline = String::from("console=ttyS0 panic=-1 quiet");
        if !self.opts.extra_cmdline.is_empty() {
            cmdline.push(' ');
            cmdline.push_str(&self.opts.extra_cmdline);
        }
        push(&cmdline);
        a.push("-kernel".into());
        a.push(self.opts.assets.kernel.clone().into());
        a.push("-initrd".into());
        a.push(layout.initrd().into());
        a.push("-chardev".into());
        a.push(chardev_socket("con0", &layout.console_socket(), true));
        a.push("-serial".into());
        a.push("chardev:con0".into());
        a.push("-chardev".into());
        a.push(chardev_socket("qmp0", &layout.control_socket(), true));
        a.push("-mon".into());
        a.push("chardev=qmp0,mode=control".into());
        a.push("-pidfile".into());
        a.push(layout.pid_file().into());
        for d in &cfg.disks {
            let mut file = OsString::from(format!("driver=file,node-name=file-{},filename=", d.id));
            file.push(escape_opt(d.path.as_os_str()));
            a.push("-blockdev".into());
            a.push(file);
            a.push("-blockdev".into());
            a.push(
                format!(
                    "driver=raw,node-name={id},file=file-{id},read-only={ro}",
                    id = d.id,
                    ro = if d.read_only { "on" } else { "off" }
                )
                .into(),
            );
            a.push("-device".into());
            a.push(
                format!(
                    "virtio-blk-pci,drive={id},id=blk-{id},serial={id}",
                    id = d.id
                )
                .into(),
            );
        }
        for (i, n) in cfg.nics.iter().enumerate() {
            a.push("-netdev".into());
            a.push(format!("tap,id=net{i},ifname={},script=no,downscript=no", n.tap).into());
            a.push("-device".into());
            a.push(format!("virtio-net-pci,netdev=net{i},mac={}", n.mac_string()).into());
        }
        if cfg.rootfs_dir().is_some() {
            a.push("-chardev".into());
            a.push(chardev_socket("vfs0", &layout.virtiofs_socket(), false));
            a.push("-device".into());
            a.push(format!("vhost-user-fs-pci,chardev=vfs0,tag={ROOTFS_TAG}").into());
        }
        for (i, share) in cfg.shares.iter().enumerate() {
            let id = format!("share{i}");
            a.push("-chardev".into());
            a.push(chardev_socket(&id, &layout.share_socket(&share.tag), false));
            a.push("-device".into());
            a.push(format!("vhost-user-fs-pci,chardev={id},tag={}", share.tag).into());
        }
        // The guest agent's port, found in the guest by its name.
        a.push("-device".into());
        a.push("virtio-serial-pci,id=agentbus".into());
        a.push("-chardev".into());
        a.push(chardev_socket("agent0", &layout.agent_socket(), true));
        a.push("-device".into());
        a.push(
            format!("virtserialport,bus=agentbus.0,chardev=agent0,name={AGENT_PORT_NAME}").into(),
        );
        a.push("-device".into());
        a.push("virtio-rng-pci".into());
        a
    }
}

/// The port name the guest agent looks for (`zos_guest_agent::PORT_NAME`).
pub const AGENT_PORT_NAME: &str = "org.zos.agent";

pub(super) fn chardev_socket(id: &str, path: &Path, server: bool) -> OsString {
    let mut s = OsString::from(format!("socket,id={id},path="));
    s.push(escape_opt(path.as_os_str()));
    if server {
        s.push(",server=on,wait=off");
    }
    s
}

/// QEMU option values escape `,` by doubling it.
pub(super) fn escape_opt(v: &std::ffi::OsStr) -> OsString {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let mut out = Vec::new();
    for &b in v.as_bytes() {
        out.push(b);
        if b == b',' {
            out.push(b',');
        }
    }
    OsString::from_vec(out)
}
