"""What trains: the model (from custom_conv.models), its optimizer and its
learning-rate schedule, as the command line asks for them."""
import sys

import torch

from ..models import get_model


def build_model(args, info, device, ckpt=None):
    """--model for the dataset `info` describes, with the weights of `ckpt` if given, on `device`."""
    model = get_model(args.model, in_channels=info["in_channels"], num_classes=info["num_classes"],
                      backend=args.backend)
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
    return model.to(device)


def check_input_size(model, image, args, device):
    """Exits with a clear message when `model` cannot take images like `image` (C, H, W), rather than
    failing with a traceback in the first step. Runs the model once in eval mode without gradients, so
    neither its weights, its batch-norm statistics nor any random state change."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(image.unsqueeze(0).to(device))
    except (ValueError, RuntimeError) as error:
        sys.exit(f"train.py: --model {args.model} cannot take --dataset {args.dataset}'s "
                 f"{'x'.join(map(str, image.shape[-2:]))} images: {str(error).splitlines()[0]}")
    finally:
        model.train(was_training)


def count_parameters(model):
    return sum(p.numel() for p in model.parameters())


def make_optimizer(args, params):
    if args.optimizer == "sgd":
        return torch.optim.SGD(params, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay,
                               nesterov=args.momentum > 0)
    cls = torch.optim.Adam if args.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=args.lr, weight_decay=args.weight_decay)


def make_scheduler(args, optimizer):
    """--schedule, stepped once per epoch."""
    if args.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs)
    if args.schedule == "step":
        milestones = [max(1, args.epochs // 2), max(1, args.epochs * 3 // 4)]
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.1)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 1.0)


def make_scaler(args, device):
    """The GradScaler for --amp: it scales float16 gradients on GPUs and does nothing otherwise."""
    return torch.amp.GradScaler(device.type, enabled=args.amp and device.type == "cuda")
