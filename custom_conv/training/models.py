"""What trains: the model (from custom_conv.models), its optimizer and its
learning-rate schedule, as the command line asks for them."""
import math
import sys

import torch

from ..models import get_model


def build_model(args, info, device, ckpt=None):
    """--model for the dataset `info` describes, with the weights of `ckpt` if given, on `device`."""
    # --pool chooses LeNet-5's pooling; the other models keep their own (train.py refuses it for them).
    pool = {"pool": args.pool} if args.model == "lenet5" else {}
    model = get_model(args.model, in_channels=info["in_channels"], num_classes=info["num_classes"],
                      backend=args.backend, **pool)
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


def schedule_factor(schedule, epochs):
    """The learning rate after `e` scheduler steps, as a multiple of --lr, for --schedule over `epochs`."""
    if schedule == "cosine":
        return lambda e: 0.5 * (1.0 + math.cos(math.pi * min(e, epochs) / epochs))
    if schedule == "step":
        milestones = (max(1, epochs // 2), max(1, epochs * 3 // 4))
        return lambda e: 0.1 ** sum(e >= m for m in milestones)
    return lambda e: 1.0


class EpochSchedule(torch.optim.lr_scheduler.LambdaLR):
    """--schedule, stepped once per epoch, as a closed form of (epoch, --epochs).

    Closed rather than chained (CosineAnnealingLR multiplies the last rate by
    a ratio, so a finished run's 0 stays 0) because a resumed run may raise
    --epochs: load_state_dict takes only the position from a checkpoint and
    sets the rate this run's total gives there. For an unchanged total that is
    bit for bit the rate an uninterrupted run has; for a raised one, cosine and
    step are recomputed over the new total (the rate jumps back up to where a
    run of that length would be, then falls again) and constant stays.
    """

    def __init__(self, optimizer, schedule, epochs):
        super().__init__(optimizer, schedule_factor(schedule, epochs))

    def load_state_dict(self, state_dict):
        # Also reads a checkpoint of the chained schedulers used before, which hold the same two entries.
        self.last_epoch = state_dict["last_epoch"]
        self.base_lrs = list(state_dict["base_lrs"])
        rates = [base * factor(self.last_epoch) for base, factor in zip(self.base_lrs, self.lr_lambdas)]
        for group, lr in zip(self.optimizer.param_groups, rates):
            group["lr"] = lr
        self._last_lr = rates


def make_scheduler(args, optimizer):
    """--schedule over --epochs, stepped once per epoch."""
    return EpochSchedule(optimizer, args.schedule, args.epochs)


def make_scaler(args, device):
    """The GradScaler for --amp: it scales float16 gradients on GPUs and does nothing otherwise."""
    return torch.amp.GradScaler(device.type, enabled=args.amp and device.type == "cuda")
