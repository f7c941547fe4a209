"""Getting images in and out: transports in skopeo's syntax and (soon) remote registries."""
